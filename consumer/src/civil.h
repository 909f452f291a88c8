/*
 * civil: Unix time to and from the proleptic Gregorian calendar in UTC, by
 * arithmetic alone (H. Hinnant's days_from_civil / civil_from_days): no
 * locale, time zone or lock, unlike gmtime_r(), which the per-request path
 * would call three times.
 */
#ifndef KM_CIVIL_H
#define KM_CIVIL_H

#include <stdint.h>

/* A moment in UTC, as struct tm has it but with the year in full. */
struct civil {
        int64_t year;
        int month; /* 1..12 */
        int day; /* 1..31 */
        int hour;
        int min;
        int sec;
        int wday; /* 0 = Sunday */
};

/* @returns the days from 1970-01-01 to the date @y-@m-@d. */
static inline int64_t civil_days_from(int64_t y, int m, int d) {
        y -= m <= 2;
        int64_t era = (y >= 0 ? y : y - 399) / 400;
        int64_t yoe = y - era * 400;
        int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
        int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

        return era * 146097 + doe - 719468;
}

/* Fills @c with the UTC date and time of @secs since the epoch (negative
 * ones too). */
static inline void civil_from_unix(int64_t secs, struct civil *c) {
        int64_t days = secs / 86400;
        int64_t rem = secs % 86400;
        int64_t z, era, doe, yoe, doy, mp;

        if (rem < 0) {
                rem += 86400;
                days--;
        }
        c->hour = (int)(rem / 3600);
        c->min = (int)(rem % 3600 / 60);
        c->sec = (int)(rem % 60);
        c->wday = (int)((days % 7 + 11) % 7); /* 1970-01-01 was a Thursday */
        z = days + 719468;
        era = (z >= 0 ? z : z - 146096) / 146097;
        doe = z - era * 146097;
        yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        mp = (5 * doy + 2) / 153;
        c->day = (int)(doy - (153 * mp + 2) / 5 + 1);
        c->month = (int)(mp < 10 ? mp + 3 : mp - 9);
        c->year = yoe + era * 400 + (c->month <= 2);
}

#endif
