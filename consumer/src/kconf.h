/*
 * kconf: assembling a librdkafka client configuration from the worker's
 * settings and the user's kafka.* pairs, with errors in one format.
 */
#ifndef KM_KCONF_H
#define KM_KCONF_H

#include <stddef.h>

#include <librdkafka/rdkafka.h>

#include "config.h"

/*
 * Sets librdkafka property @key to @value in @kc. @scope names the client
 * in errors, e.g. "kafka.consumer".
 * @returns 0, or -1 with "<scope>.<key>=<value>: <librdkafka's reason>" in
 * @errstr (the value shown as "***" when props_is_secret(@key)).
 */
int kconf_set(rd_kafka_conf_t *kc, const char *scope, const char *key,
              const char *value, char *errstr, size_t errstr_size);

/* Sets the @cnt rows {key, value} of @table in order, as kconf_set().
 * @returns 0, or -1 at the first failure. */
int kconf_set_table(rd_kafka_conf_t *kc, const char *scope,
                    const char *const (*table)[2], size_t cnt, char *errstr,
                    size_t errstr_size);

/* Sets the user's @cnt pairs @kvs in order, as kconf_set(), but for those
 * @takes (optional) returns 0 for.
 * @returns 0, or -1 at the first failure. */
int kconf_set_kvs(rd_kafka_conf_t *kc, const char *scope,
                  const struct config_kv *kvs, size_t cnt,
                  int (*takes)(const char *key), char *errstr,
                  size_t errstr_size);

#endif
