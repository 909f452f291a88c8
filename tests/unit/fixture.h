/*
 * fixture: helpers for the fixture-driven unit tests. Cases live in
 * $KM_FIXTURES/<group>/<case>/ (input.json, and error for invalid cases).
 */
#ifndef KM_TEST_FIXTURE_H
#define KM_TEST_FIXTURE_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a whole file. @returns a malloc'd NUL-terminated buffer or NULL. */
static inline char *fixture_read(const char *path, size_t *len) {
        FILE *f = fopen(path, "rb");
        char *buf = NULL;
        size_t cap = 0;
        size_t n = 0;

        if (f == NULL)
                return NULL;
        for (;;) {
                if (n + 4096 + 1 > cap) {
                        char *p;

                        cap = cap ? cap * 2 : 8192;
                        p = realloc(buf, cap);
                        if (p == NULL) {
                                free(buf);
                                fclose(f);
                                return NULL;
                        }
                        buf = p;
                }
                size_t r = fread(buf + n, 1, 4096, f);

                n += r;
                if (r < 4096)
                        break;
        }
        fclose(f);
        buf[n] = '\0';
        if (len != NULL)
                *len = n;
        return buf;
}

static inline int fixture_cmp(const void *a, const void *b) {
        return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists the case folders of $KM_FIXTURES/@group, sorted, as full paths.
 * @returns the count (the array in @out, free with fixture_free_list). */
static inline size_t fixture_list(const char *group, char ***out) {
        const char *base = getenv("KM_FIXTURES");
        char dir[1024];
        DIR *d;
        struct dirent *e;
        char **list = NULL;
        size_t n = 0;

        *out = NULL;
        if (base == NULL)
                base = "tests/fixtures";
        snprintf(dir, sizeof(dir), "%s/%s", base, group);
        d = opendir(dir);
        if (d == NULL)
                return 0;
        while ((e = readdir(d)) != NULL) {
                char **p;
                char path[2048];

                if (e->d_name[0] == '.')
                        continue;
                p = realloc(list, (n + 1) * sizeof(*list));
                if (p == NULL)
                        break;
                list = p;
                snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
                list[n++] = strdup(path);
        }
        closedir(d);
        qsort(list, n, sizeof(*list), fixture_cmp);
        *out = list;
        return n;
}

static inline void fixture_free_list(char **list, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(list[i]);
        free(list);
}

/* The case name: the last path component. */
static inline const char *fixture_name(const char *path) {
        const char *s = strrchr(path, '/');

        return s != NULL ? s + 1 : path;
}

#endif
