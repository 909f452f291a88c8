#include "props.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

static int props_is_space(char c) {
        return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' ||
               c == '\v';
}

/* Trims white space at both ends of @s in place. @returns @s's new start. */
static char *props_trim(char *s) {
        size_t len;

        while (props_is_space(*s))
                s++;
        len = strlen(s);
        while (len > 0 && props_is_space(s[len - 1]))
                s[--len] = '\0';
        return s;
}

int props_read_file(const char *path, props_set_cb *set, void *arg,
                    char *errstr, size_t errstr_size) {
        FILE *fp = NULL;
        char *line = NULL;
        size_t line_size = 0;
        unsigned long lineno = 0;
        char source[4096 + 32];
        ssize_t len;
        int r = -1;

        fp = fopen(path, "r");
        if (!fp) {
                snprintf(errstr, errstr_size, "%s: cannot open: %s", path,
                         strerror(errno));
                goto out;
        }
        errno = 0;
        while ((len = getline(&line, &line_size, fp)) != -1) {
                char *key, *value, *eq;

                lineno++;
                snprintf(source, sizeof(source), "%s:%lu", path, lineno);
                if (len > PROPS_LINE_MAX) {
                        snprintf(errstr, errstr_size,
                                 "%s: line longer than %d bytes", source,
                                 PROPS_LINE_MAX);
                        goto out;
                }
                if ((size_t)len != strlen(line)) {
                        snprintf(errstr, errstr_size, "%s: NUL byte in line",
                                 source);
                        goto out;
                }
                key = props_trim(line);
                if (key[0] == '\0' || key[0] == '#')
                        continue;
                eq = strchr(key, '=');
                if (!eq) {
                        snprintf(errstr, errstr_size, "%s: expected key=value",
                                 source);
                        goto out;
                }
                *eq = '\0';
                value = props_trim(eq + 1);
                key = props_trim(key);
                if (key[0] == '\0') {
                        snprintf(errstr, errstr_size, "%s: no key before '='",
                                 source);
                        goto out;
                }
                if (set(key, value, source, arg, errstr, errstr_size) == -1)
                        goto out;
                errno = 0;
        }
        if (ferror(fp)) {
                snprintf(errstr, errstr_size, "%s: read error: %s", path,
                         strerror(errno ? errno : EIO));
                goto out;
        }
        r = 0;

out:
        if (line) {
                explicit_bzero(line, line_size);
                free(line);
        }
        if (fp)
                fclose(fp);
        return r;
}

int props_read_secret(const char *name, const char *path, char *buf,
                      size_t size, char *errstr, size_t errstr_size) {
        FILE *fp = NULL;
        size_t len;
        int r = -1;

        buf[0] = '\0';
        fp = fopen(path, "r");
        if (!fp) {
                snprintf(errstr, errstr_size, "%s: cannot open \"%s\": %s",
                         name, path, strerror(errno));
                goto out;
        }
        if (!fgets(buf, (int)size, fp)) {
                if (ferror(fp))
                        snprintf(errstr, errstr_size, "%s: cannot read \"%s\"",
                                 name, path);
                else
                        snprintf(errstr, errstr_size, "%s: \"%s\" is empty",
                                 name, path);
                goto out;
        }
        len = strlen(buf);
        if (len > 0 && buf[len - 1] == '\n')
                buf[--len] = '\0';
        else if (len > size - 2) {
                snprintf(errstr, errstr_size,
                         "%s: \"%s\": first line longer than %zu bytes", name,
                         path, size - 2);
                goto out;
        }
        if (len > 0 && buf[len - 1] == '\r')
                buf[--len] = '\0';
        if (len == 0) {
                snprintf(errstr, errstr_size, "%s: \"%s\": first line is empty",
                         name, path);
                goto out;
        }
        r = 0;

out:
        if (r != 0)
                explicit_bzero(buf, size);
        if (fp)
                fclose(fp);
        return r;
}

int props_is_secret(const char *key) {
        return strstr(key, "password") != NULL ||
               strstr(key, "secret") != NULL ||
               strcmp(key, "ssl.key.pem") == 0 ||
               strcmp(key, "sasl.oauthbearer.config") == 0;
}

size_t props_secret_file_key(const char *key) {
        const size_t sfx = strlen(".file");
        size_t len = strlen(key);
        char prop[256];

        if (len <= sfx || len - sfx >= sizeof(prop) ||
            strcmp(key + len - sfx, ".file") != 0)
                return 0;
        memcpy(prop, key, len - sfx);
        prop[len - sfx] = '\0';
        return props_is_secret(prop) ? len - sfx : 0;
}
