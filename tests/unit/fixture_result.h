/*
 * fixture_result: the result record of a request sent on the second attempt,
 * for the unit tests of results and recall. Include it after cmocka.h.
 */
#ifndef KM_TEST_FIXTURE_RESULT_H
#define KM_TEST_FIXTURE_RESULT_H

#include <string.h>

#include "results.h"

/* A result_rec for the request @id (read from email.requests [3] at offset
 * 1842): sent with 250 @smtp_reply on attempt 2, as @message_id; every other
 * field zero. The strings are borrowed. */
static inline struct result_rec fixture_result_sent(const char *id,
                                                    const char *smtp_reply,
                                                    const char *message_id) {
        struct result_rec rec;

        memset(&rec, 0, sizeof(rec));
        rec.id = id;
        rec.status = RESULT_SENT;
        rec.attempts = 2;
        rec.smtp_code = 250;
        rec.smtp_reply = smtp_reply;
        rec.message_id = message_id;
        rec.source.topic = "email.requests";
        rec.source.partition = 3;
        rec.source.offset = 1842;
        return rec;
}

#endif
