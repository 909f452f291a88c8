/*
 * fuzz_jsonparse: jsonparse_loadb() and jsonparse_fields() against
 * json_loadb() with the flags the worker uses. Whatever the fast parser
 * accepts, jansson must accept with an equal value; what jansson rejects,
 * the fast parser must reject too. jsonparse_fields() must give exactly the
 * members of the object jansson reads, each equal.
 */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "jsonparse.h"
#include "message_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The request's fields, and a key that starts like one of them. */
static const char *const names[] = {"v",  "id",       "from",    "to",
                                    "cc", "reply_to", "subject", "text",
                                    "t",  "metadata"};
#define NAMES (sizeof(names) / sizeof(names[0]))

static void check_fields(const uint8_t *data, size_t size, const json_t *ref) {
        json_t *f[NAMES];
        size_t got = 0;

        if (jsonparse_fields((const char *)data, size, names, NAMES, f) != 0) {
                for (size_t i = 0; i < NAMES; i++)
                        if (f[i] != NULL)
                                fuzz_fail("jsonparse_fields left a value");
                return;
        }
        if (ref == NULL || !json_is_object(ref))
                fuzz_fail("jsonparse_fields took what is no JSON object");
        for (size_t i = 0; i < NAMES; i++) {
                const json_t *r = json_object_get(ref, names[i]);

                if ((f[i] == NULL) != (r == NULL) ||
                    (f[i] != NULL && !json_equal(f[i], r)))
                        fuzz_fail("jsonparse_fields and jansson disagree");
                got += f[i] != NULL;
                json_decref(f[i]);
        }
        if (got != json_object_size(ref))
                fuzz_fail("jsonparse_fields passed over a member");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        json_error_t err;
        json_t *fast = jsonparse_loadb((const char *)data, size);
        json_t *ref = json_loadb((const char *)data, size,
                                 JSON_REJECT_DUPLICATES | JSON_DECODE_ANY |
                                         JSON_ALLOW_NUL,
                                 &err);

        if (fast != NULL && ref == NULL)
                fuzz_fail("jsonparse accepted what jansson rejects");
        if (fast != NULL && !json_equal(fast, ref))
                fuzz_fail("jsonparse and jansson disagree on the value");
        check_fields(data, size, ref);
        json_decref(fast);
        json_decref(ref);
        return 0;
}
