/*
 * fuzz_config: the bytes as a properties file through config_load_file()
 * (via a memfd) on a fresh config; the bytes split at the first '=' as a
 * config_set() key and value; and the lines as KAFKA_MAILER_* environment
 * entries through config_load_env(). After each, the config is dumped (to
 * exercise every field) and destroyed; LeakSanitizer reports leaks.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"
#include "message_check.h"

#define ENV_MAX 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static FILE *null_fp;

/* @returns a NUL-terminated copy of @len bytes. */
static char *dup_bytes(const uint8_t *p, size_t len) {
        char *s = malloc(len + 1);

        if (s == NULL)
                abort();
        memcpy(s, p, len);
        s[len] = '\0';
        return s;
}

static void check_err(int r, const char *err, size_t err_size) {
        if (r != 0 && r != -1)
                fuzz_fail("result neither 0 nor -1");
        if (memchr(err, '\0', err_size) == NULL)
                fuzz_fail("errstr not NUL-terminated");
        if (r == -1 && err[0] == '\0')
                fuzz_fail("failure without a reason");
}

static void dump_and_destroy(struct config *conf) {
        if (null_fp == NULL)
                null_fp = fopen("/dev/null", "w");
        if (null_fp != NULL)
                config_dump(conf, null_fp);
        config_destroy(conf);
}

static void fuzz_file(const uint8_t *data, size_t size) {
        struct config *conf = config_new();
        char path[64];
        char err[512] = "";
        int fd;
        int r;

        if (conf == NULL)
                abort();
        fd = memfd_create("fuzz_config", 0);
        if (fd < 0)
                abort();
        for (size_t off = 0; off < size;) {
                ssize_t n = write(fd, data + off, size - off);

                if (n <= 0)
                        abort();
                off += (size_t)n;
        }
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        r = config_load_file(conf, path, err, sizeof(err));
        check_err(r, err, sizeof(err));
        close(fd);
        dump_and_destroy(conf);
}

static void fuzz_set(const uint8_t *data, size_t size) {
        struct config *conf = config_new();
        const uint8_t *eq = memchr(data, '=', size);
        size_t klen = eq != NULL ? (size_t)(eq - data) : size;
        char *key = dup_bytes(data, klen);
        char *value = eq != NULL ? dup_bytes(eq + 1, size - klen - 1)
                                 : dup_bytes(data, 0);
        char err[512] = "";
        int r;

        if (conf == NULL)
                abort();
        r = config_set(conf, key, value, "-X", err, sizeof(err));
        check_err(r, err, sizeof(err));
        /* Setting it twice replaces the first value without a leak. */
        r = config_set(conf, key, value, "-X", err, sizeof(err));
        check_err(r, err, sizeof(err));
        free(key);
        free(value);
        dump_and_destroy(conf);
}

static void fuzz_env(const uint8_t *data, size_t size) {
        struct config *conf = config_new();
        char *copy = dup_bytes(data, size);
        char *envp[ENV_MAX + 1];
        size_t n = 0;
        char *save = NULL;
        char err[512] = "";
        int r;

        if (conf == NULL)
                abort();
        for (char *line = strtok_r(copy, "\n", &save);
             line != NULL && n < ENV_MAX; line = strtok_r(NULL, "\n", &save))
                envp[n++] = line;
        envp[n] = NULL;
        r = config_load_env(conf, envp, err, sizeof(err));
        check_err(r, err, sizeof(err));
        free(copy);
        dump_and_destroy(conf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        fuzz_file(data, size);
        fuzz_set(data, size);
        fuzz_env(data, size);
        return 0;
}
