/*
 * fixture: helpers for the fixture-driven and table-driven unit tests. Cases
 * live in $KM_FIXTURES/<group>/<case>/ (input.json, and error for invalid
 * cases) or in a table of rows in the test file. Include it after cmocka.h.
 */
#ifndef KM_TEST_FIXTURE_H
#define KM_TEST_FIXTURE_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* Writes @content to a new file made from the mkstemp() template @path
 * (e.g. "/tmp/test_x.XXXXXX"), whose name replaces the template. */
static inline void fixture_write_tmp(const char *content, char *path) {
        size_t len = strlen(content);
        int fd = mkstemp(path);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, content, len), (ssize_t)len);
        close(fd);
}

/* Reads the file @file of the case folder @dir; it must exist.
 * @returns a malloc'd NUL-terminated buffer (its length in @len if not
 * NULL). */
static inline char *fixture_case_read(const char *dir, const char *file,
                                      size_t *len) {
        char path[2048];
        char *buf;

        snprintf(path, sizeof(path), "%s/%s", dir, file);
        buf = fixture_read(path, len);
        if (buf == NULL)
                print_error("cannot read %s\n", path);
        assert_non_null(buf);
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

/* The number of rows of the table (an array, not a pointer) @t. */
#define FIXTURE_LEN(t) (sizeof(t) / sizeof((t)[0]))

/* Tests generated from cases: @test runs once a case with *state pointing at
 * it. A case is a row of @rows (@count of @row_size bytes) that starts with
 * its name as a const char *; a fixture folder list (fixture_list()) is such
 * a table. The test is named @prefix/<the name's last path component>. */
struct fixture_cases {
        const char *prefix;
        CMUnitTestFunction test;
        const void *rows;
        size_t row_size;
        size_t count;
};

/* The name of the case at @row (a row of a struct fixture_cases). */
static inline const char *fixture_case_name(const void *row) {
        return *(const char *const *)row;
}

/* Runs the group @group: the @nfixed tests of @fixed, then one test a case
 * of each of the @nsets sets. @returns what cmocka returns (the number of
 * failed tests), or 1 when out of memory. */
static inline int fixture_run_group(const char *group,
                                    const struct CMUnitTest *fixed,
                                    size_t nfixed,
                                    const struct fixture_cases *sets,
                                    size_t nsets) {
        struct CMUnitTest *tests = NULL;
        char **names = NULL;
        size_t n = nfixed;
        size_t k = nfixed;
        int rc = 1;

        for (size_t s = 0; s < nsets; s++)
                n += sets[s].count;
        tests = calloc(n + 1, sizeof(*tests));
        names = calloc(n + 1, sizeof(*names));
        if (tests == NULL || names == NULL)
                goto out;
        if (nfixed > 0)
                memcpy(tests, fixed, nfixed * sizeof(*fixed));
        for (size_t s = 0; s < nsets; s++) {
                const char *rows = sets[s].rows;

                for (size_t i = 0; i < sets[s].count; i++, k++) {
                        const void *row = rows + i * sets[s].row_size;
                        const char *name = fixture_name(fixture_case_name(row));
                        size_t len = strlen(sets[s].prefix) + strlen(name) + 2;

                        names[k] = malloc(len);
                        if (names[k] == NULL)
                                goto out;
                        snprintf(names[k], len, "%s/%s", sets[s].prefix, name);
                        tests[k].name = names[k];
                        tests[k].test_func = sets[s].test;
                        tests[k].initial_state = (void *)row;
                }
        }
        rc = _cmocka_run_group_tests(group, tests, n, NULL, NULL);
out:
        if (names != NULL) {
                for (size_t i = 0; i < n; i++)
                        free(names[i]);
        }
        free(names);
        free(tests);
        return rc;
}

#endif
