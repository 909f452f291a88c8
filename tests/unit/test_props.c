/* props: the properties-file reader and the secret-file reader shared by the
 * worker's configuration and the tools' -F. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"
#include "props.h"

static char errstr[512];

/* Writes @content to a new temporary file whose name goes to @path. */
static void write_tmp(const char *content, char *path, size_t path_size) {
        snprintf(path, path_size, "/tmp/km-props-XXXXXX");
        fixture_write_tmp(content, path);
}

/* props_read_file()'s callback: appends "key=value|" to the buffer @arg,
 * and fails on key "fail" with the source in errstr. */
static int collect(const char *key, const char *value, const char *source,
                   void *arg, char *err, size_t err_size) {
        char *out = arg;
        size_t len = strlen(out);

        if (strcmp(key, "fail") == 0) {
                snprintf(err, err_size, "%s: refused", source);
                return -1;
        }
        snprintf(out + len, 1024 - len, "%s=%s|", key, value);
        return 0;
}

/* A file props_read_file() reads: the pairs it passes on ("key=value|"
 * each), or when @error is set the error after the file's path. */
struct read_case {
        const char *name;
        const char *content;
        const char *pairs;
        const char *error;
};

static const struct read_case read_cases[] = {
        {"pairs_in_order", "a=1\nb=2\na=3\n", "a=1|b=2|a=3|", NULL},
        {"blank_and_comment_lines_skipped",
         "# librdkafka\n\n   \n\t# indented comment\nsecurity.protocol=SASL_SSL\n",
         "security.protocol=SASL_SSL|", NULL},
        {"whitespace_around_key_and_value_trimmed",
         "  sasl.username \t=  mailer  \n", "sasl.username=mailer|", NULL},
        {"crlf_lines", "a=1\r\nb=2\r\n", "a=1|b=2|", NULL},
        {"value_keeps_its_equals_signs", "sasl.oauthbearer.config=a=b c=d\n",
         "sasl.oauthbearer.config=a=b c=d|", NULL},
        {"empty_value", "client.id=\n", "client.id=|", NULL},
        {"last_line_without_newline", "a=1\nb=2", "a=1|b=2|", NULL},
        {"line_without_equals_named_not_echoed",
         "a=1\n\nsasl.password hunter2\n", NULL, ":3: expected key=value"},
        {"no_key_before_equals", "a=1\n = x\n", NULL, ":2: no key before '='"},
        {"callback_error_stops_with_its_source", "a=1\nfail=x\nb=2\n", NULL,
         ":2: refused"},
};

static void test_read_case(void **state) {
        const struct read_case *c = *state;
        char path[64], out[1024] = "", expected[256];
        int rc;

        write_tmp(c->content, path, sizeof(path));
        rc = props_read_file(path, collect, out, errstr, sizeof(errstr));
        unlink(path);
        if (c->error == NULL) {
                assert_int_equal(rc, 0);
                assert_string_equal(out, c->pairs);
                return;
        }
        assert_int_equal(rc, -1);
        snprintf(expected, sizeof(expected), "%s%s", path, c->error);
        assert_string_equal(errstr, expected);
        assert_null(strstr(errstr, "hunter2"));
}

static void test_missing_file_named(void **state) {
        char out[1024] = "";

        (void)state;
        assert_int_equal(props_read_file("/nonexistent/x.properties", collect,
                                         out, errstr, sizeof(errstr)),
                         -1);
        assert_string_equal(errstr, "/nonexistent/x.properties: cannot open: "
                                    "No such file or directory");
}

/* A secret file props_read_secret() reads into a 10-byte buffer (8
 * characters at most): the secret, or the error after "pw.file: ". */
struct secret_case {
        const char *name;
        const char *content;
        const char *secret;
        const char *error;
};

static const struct secret_case secret_cases[] = {
        {"first_line_only", "hunter2\nsecond\n", "hunter2", NULL},
        {"crlf_dropped", "hunter2\r\n", "hunter2", NULL},
        {"no_newline", "hunter2", "hunter2", NULL},
        {"spaces_kept", " a b \n", " a b ", NULL},
        {"longest_line", "12345678\n", "12345678", NULL},
        {"empty_file", "", NULL, "is empty"},
        {"empty_first_line", "\nhunter2\n", NULL, "first line is empty"},
        {"too_long", "123456789\n", NULL, "first line longer than 8 bytes"},
};

static void test_secret_case(void **state) {
        const struct secret_case *c = *state;
        char path[64], buf[10];
        int rc;

        write_tmp(c->content, path, sizeof(path));
        rc = props_read_secret("pw.file", path, buf, sizeof(buf), errstr,
                               sizeof(errstr));
        unlink(path);
        if (c->error == NULL) {
                assert_int_equal(rc, 0);
                assert_string_equal(buf, c->secret);
                return;
        }
        assert_int_equal(rc, -1);
        assert_true(strncmp(errstr, "pw.file: ", 9) == 0);
        assert_non_null(strstr(errstr, c->error));
        assert_null(strstr(errstr, "12345678"));
}

static void test_missing_secret_file_named(void **state) {
        char buf[10];

        (void)state;
        assert_int_equal(props_read_secret("sasl.password.file", "/nonexistent",
                                           buf, sizeof(buf), errstr,
                                           sizeof(errstr)),
                         -1);
        assert_string_equal(errstr, "sasl.password.file: cannot open "
                                    "\"/nonexistent\": No such file or "
                                    "directory");
}

static void test_secret_properties(void **state) {
        (void)state;
        assert_true(props_is_secret("sasl.password"));
        assert_true(props_is_secret("ssl.key.password"));
        assert_true(props_is_secret("ssl.keystore.password"));
        assert_true(props_is_secret("sasl.oauthbearer.client.secret"));
        assert_true(props_is_secret("ssl.key.pem"));
        assert_true(props_is_secret("sasl.oauthbearer.config"));
        assert_false(props_is_secret("sasl.username"));
        assert_false(props_is_secret("bootstrap.servers"));
}

static void test_secret_file_keys(void **state) {
        (void)state;
        assert_int_equal(props_secret_file_key("sasl.password.file"),
                         strlen("sasl.password"));
        assert_int_equal(props_secret_file_key("ssl.key.password.file"),
                         strlen("ssl.key.password"));
        /* librdkafka's own *.file properties and plain keys */
        assert_int_equal(props_secret_file_key("ssl.ca.location"), 0);
        assert_int_equal(props_secret_file_key("sasl.kerberos.keytab.file"), 0);
        assert_int_equal(props_secret_file_key("sasl.password"), 0);
        assert_int_equal(props_secret_file_key(".file"), 0);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_missing_file_named),
                cmocka_unit_test(test_missing_secret_file_named),
                cmocka_unit_test(test_secret_properties),
                cmocka_unit_test(test_secret_file_keys),
        };
        const struct fixture_cases sets[] = {
                {"read", test_read_case, read_cases, sizeof(read_cases[0]),
                 FIXTURE_LEN(read_cases)},
                {"secret", test_secret_case, secret_cases,
                 sizeof(secret_cases[0]), FIXTURE_LEN(secret_cases)},
        };

        return fixture_run_group("props", tests, FIXTURE_LEN(tests), sets,
                                 FIXTURE_LEN(sets));
}
