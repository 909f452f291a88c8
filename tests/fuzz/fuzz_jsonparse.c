/*
 * fuzz_jsonparse: jsonparse_loadb() against json_loadb() with the flags the
 * worker uses. Whatever the fast parser accepts, jansson must accept with an
 * equal value; what jansson rejects, the fast parser must reject too.
 */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "jsonparse.h"
#include "message_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
        json_decref(fast);
        json_decref(ref);
        return 0;
}
