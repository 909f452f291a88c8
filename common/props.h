/*
 * props: files of key=value lines (the worker's configuration file, the
 * tools' -F librdkafka properties) and secrets read from the first line of
 * a file (smtp.password.file, kafka.<prop>.file, -F's <prop>.file).
 */
#ifndef KM_PROPS_H
#define KM_PROPS_H

#include <stddef.h>

#define PROPS_LINE_MAX 65536 /* longest line of a properties file */
#define PROPS_SECRET_MAX 4096 /* longest first line of a secret's file */

/* Called for each key=value line, with both trimmed and @source
 * "<path>:<line>". @returns 0, or -1 with why in @errstr (which should name
 * @source). */
typedef int(props_set_cb)(const char *key, const char *value,
                          const char *source, void *arg, char *errstr,
                          size_t errstr_size);

/*
 * Reads the properties file @path: blank lines and lines whose first
 * non-blank character is '#' are skipped; white space around the key and
 * the value is trimmed (so CRLF lines work); every other line is key=value
 * (the value may hold '=' and be empty), passed to @set(..., @arg, ...) in
 * order. A line is never echoed in errors: it may hold a secret.
 * @returns 0, or -1 at the first error with "<path>:<line>: <why>" (or
 * "<path>: <why>") in @errstr.
 */
int props_read_file(const char *path, props_set_cb *set, void *arg,
                    char *errstr, size_t errstr_size);

/*
 * Reads the first line of the file @path, without its "\n" or "\r\n", into
 * @buf of @size bytes (at most @size - 2 characters). @name is the setting
 * that named the file, for errors ("smtp.password.file"). The line is never
 * echoed; the caller clears @buf (explicit_bzero()) once done with it.
 * @returns 0, or -1 with "<name>: ..." in @errstr (no such file, empty,
 * first line empty or too long).
 */
int props_read_secret(const char *name, const char *path, char *buf,
                      size_t size, char *errstr, size_t errstr_size);

/* @returns 1 when librdkafka property @key holds a secret (a password, a
 * private key), which is never shown and may be read from <key>.file. */
int props_is_secret(const char *key);

/* @returns the length of <prop> when @key is "<prop>.file" for a secret
 * <prop> (props_is_secret()), else 0. */
size_t props_secret_file_key(const char *key);

#endif
