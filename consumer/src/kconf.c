#include "kconf.h"

#include "props.h"

#include <stdio.h>
#include <string.h>

int kconf_set(rd_kafka_conf_t *kc, const char *scope, const char *key,
              const char *value, char *errstr, size_t errstr_size) {
        char rderr[256];

        if (rd_kafka_conf_set(kc, key, value, rderr, sizeof(rderr)) ==
            RD_KAFKA_CONF_OK)
                return 0;
        snprintf(errstr, errstr_size, "%s.%s=%s: %s", scope, key,
                 props_is_secret(key) ? "***" : value, rderr);
        return -1;
}

int kconf_set_table(rd_kafka_conf_t *kc, const char *scope,
                    const char *const (*table)[2], size_t cnt, char *errstr,
                    size_t errstr_size) {
        for (size_t i = 0; i < cnt; i++)
                if (kconf_set(kc, scope, table[i][0], table[i][1], errstr,
                              errstr_size) != 0)
                        return -1;
        return 0;
}

int kconf_set_kvs(rd_kafka_conf_t *kc, const char *scope,
                  const struct config_kv *kvs, size_t cnt,
                  int (*takes)(const char *key), char *errstr,
                  size_t errstr_size) {
        for (size_t i = 0; i < cnt; i++) {
                if (takes != NULL && !takes(kvs[i].key))
                        continue;
                if (kconf_set(kc, scope, kvs[i].key, kvs[i].value, errstr,
                              errstr_size) != 0)
                        return -1;
        }
        return 0;
}
