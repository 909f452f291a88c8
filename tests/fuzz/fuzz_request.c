/*
 * fuzz_request: request_parse() on arbitrary bytes with small limits and,
 * when a request is accepted, message_build() on it; the built message must
 * keep the invariants of message_check().
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "message.h"
#include "message_check.h"
#include "request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct request_limits fuzz_limits = {
        .max_bytes = 65536,
        .max_recipients = 10,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct mail_request *req;
        struct message *msg;
        struct message_opts opts = {.message_id_domain = NULL,
                                    .date_ms = 1700000000123};
        char id[32];
        char err[256] = "";

        req = request_parse((const char *)data, size, &fuzz_limits, id,
                            sizeof(id), err, sizeof(err));
        if (memchr(id, '\0', sizeof(id)) == NULL)
                fuzz_fail("idbuf not NUL-terminated");
        if (req == NULL) {
                if (err[0] == '\0' || memchr(err, '\0', sizeof(err)) == NULL)
                        fuzz_fail("rejection without a reason");
                return 0;
        }
        if (request_recipient_count(req) == 0 ||
            request_recipient_count(req) > fuzz_limits.max_recipients)
                fuzz_fail("accepted recipient count out of limits");
        if (req->text == NULL && req->html == NULL)
                fuzz_fail("accepted without text or html");

        /* Every accepted request builds, with the From domain (an address
         * literal included) or a configured domain in the Message-ID. */
        msg = message_build(req, &opts, err, sizeof(err));
        if (msg == NULL)
                fuzz_fail("valid request not built");
        message_check(req, msg);
        message_destroy(msg);
        opts.message_id_domain = "fuzz.example";
        msg = message_build(req, &opts, err, sizeof(err));
        if (msg == NULL)
                fuzz_fail("valid request not built with a configured domain");
        message_check(req, msg);
        message_destroy(msg);
        request_destroy(req);
        return 0;
}
