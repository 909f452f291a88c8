// KafkaAcl: adds, removes or lists ACLs through Kafka's Admin API, for deploy/local/kafka-acl.
//   KafkaAcl BOOTSTRAP CLIENT-PROPERTIES add|remove PRINCIPAL RESOURCE OPERATION...
//   KafkaAcl BOOTSTRAP CLIENT-PROPERTIES list
// RESOURCE is topic:NAME, group:NAME, transactional-id:NAME or cluster; OPERATION an
// AclOperation name (READ, WRITE, DESCRIBE, IDEMPOTENT_WRITE, ...). Every binding allows
// the operation from any host. Each call waits up to 30 s for the broker's answer.
import java.io.FileInputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class KafkaAcl {
    private static void usage() {
        System.err.println("usage: KafkaAcl BOOTSTRAP PROPS add|remove PRINCIPAL RESOURCE OP...");
        System.err.println("       KafkaAcl BOOTSTRAP PROPS list");
        System.exit(2);
    }

    private static ResourcePattern pattern(String resource) {
        if (resource.equals("cluster"))
            return new ResourcePattern(ResourceType.CLUSTER, "kafka-cluster", PatternType.LITERAL);
        int colon = resource.indexOf(':');
        if (colon <= 0)
            usage();
        ResourceType type = ResourceType.fromString(resource.substring(0, colon).replace('-', '_'));
        if (type == ResourceType.UNKNOWN)
            usage();
        return new ResourcePattern(type, resource.substring(colon + 1), PatternType.LITERAL);
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 3)
            usage();
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[1])) {
            props.load(in);
        }
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        String cmd = args[2];
        try (Admin admin = Admin.create(props)) {
            if (cmd.equals("list") && args.length == 3) {
                for (AclBinding b : admin.describeAcls(AclBindingFilter.ANY).values()
                             .get(30, TimeUnit.SECONDS))
                    System.out.println(b);
                return;
            }
            if (args.length < 6 || !(cmd.equals("add") || cmd.equals("remove")))
                usage();
            ResourcePattern rp = pattern(args[4]);
            List<AclBinding> bindings = new ArrayList<>();
            for (int i = 5; i < args.length; i++) {
                AclOperation op = AclOperation.fromString(args[i]);
                if (op == AclOperation.UNKNOWN)
                    usage();
                bindings.add(new AclBinding(rp, new AccessControlEntry(args[3], "*", op,
                        AclPermissionType.ALLOW)));
            }
            if (cmd.equals("add")) {
                admin.createAcls(bindings).all().get(30, TimeUnit.SECONDS);
            } else {
                List<AclBindingFilter> filters = new ArrayList<>();
                for (AclBinding b : bindings)
                    filters.add(b.toFilter());
                admin.deleteAcls(filters).all().get(30, TimeUnit.SECONDS);
            }
        }
    }
}
