/*
 * fuzz_smtp_reply: smtp_reply_parse() on arbitrary bytes. The first byte
 * picks the size of the text buffer (0..255) so truncation is exercised.
 * Invariants: the result is -1, 0 or at most the input length and ends at a
 * LF; a complete reply has a code in 200..599 and a NUL-terminated text
 * without control characters but tab; parsing is stable under streaming
 * (the used bytes alone give the same reply, a shorter prefix needs more).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "message_check.h"
#include "smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Parses a copy of @len bytes in a buffer of exactly that size, so that
 * ASan sees any read past the end. */
static long parse_copy(const char *buf, size_t len, int *code, char *text,
                       size_t text_size) {
        char *copy = malloc(len ? len : 1);
        long r;

        if (copy == NULL)
                abort();
        if (len > 0)
                memcpy(copy, buf, len);
        r = smtp_reply_parse(copy, len, code, text, text_size);
        free(copy);
        return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *buf;
        size_t len;
        size_t text_size;
        char *text;
        char *text2;
        int code = 0;
        int code2 = 0;
        long r;
        long r2;

        if (size < 1)
                return 0;
        text_size = data[0];
        buf = (const char *)data + 1;
        len = size - 1;
        text = malloc(text_size ? text_size : 1);
        text2 = malloc(text_size ? text_size : 1);
        if (text == NULL || text2 == NULL)
                abort();

        r = smtp_reply_parse(buf, len, &code, text, text_size);
        if (r < -1 || (r > 0 && (size_t)r > len))
                fuzz_fail("result out of range");
        if (r > 0) {
                if (code < 200 || code > 599)
                        fuzz_fail("reply code outside 200..599");
                if (buf[r - 1] != '\n')
                        fuzz_fail("used bytes do not end with LF");
                if (text_size > 0) {
                        size_t tl = strnlen(text, text_size);

                        if (tl == text_size)
                                fuzz_fail("text not NUL-terminated");
                        for (size_t i = 0; i < tl; i++) {
                                unsigned char c = (unsigned char)text[i];

                                if (c < 0x20 && c != '\t')
                                        fuzz_fail("control character in text");
                        }
                }
                r2 = parse_copy(buf, (size_t)r, &code2, text2, text_size);
                if (r2 != r || code2 != code ||
                    (text_size > 0 && strcmp(text, text2) != 0))
                        fuzz_fail("the used bytes alone parse differently");
                r2 = parse_copy(buf, (size_t)r - 1, &code2, text2, text_size);
                if (r2 != 0)
                        fuzz_fail(
                                "a prefix of a complete reply is not incomplete");
        } else if (r == 0 && len > 0) {
                r2 = parse_copy(buf, len / 2, &code2, text2, text_size);
                if (r2 != 0)
                        fuzz_fail(
                                "a prefix of an incomplete reply is not incomplete");
        }
        free(text);
        free(text2);
        return 0;
}
