//! Beijing calendar days: WeChat's daily quotas end at midnight in Beijing (UTC+8, which keeps
//! no daylight saving time), whatever the gateway's own time zone.

const DAY_MS: i64 = 86_400_000;
const BEIJING_OFFSET_MS: i64 = 8 * 3_600_000;

/// The Beijing day `ms` (Unix milliseconds) falls in, as days since 1970-01-01 in Beijing.
pub fn beijing_day(ms: i64) -> i64 {
    (ms + BEIJING_OFFSET_MS).div_euclid(DAY_MS)
}

/// The next Beijing midnight after `ms`, in Unix milliseconds.
pub fn next_beijing_midnight(ms: i64) -> i64 {
    (beijing_day(ms) + 1) * DAY_MS - BEIJING_OFFSET_MS
}

/// `YYYY-MM-DD HH:MM` in Beijing time, for error messages and the admin API.
pub fn beijing_time(ms: i64) -> String {
    let local = ms + BEIJING_OFFSET_MS;
    let (y, m, d) = crate::civil::date_of_days(local.div_euclid(DAY_MS));
    let minutes = local.rem_euclid(DAY_MS) / 60_000;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", minutes / 60, minutes % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-06 15:59:59.999 UTC is 23:59:59.999 in Beijing: the day ends a millisecond later.
    #[test]
    fn a_beijing_day_ends_at_16_00_utc() {
        let before = 1_796_572_799_999; // 2026-12-06T15:59:59.999Z
        assert_eq!(beijing_day(before) + 1, beijing_day(before + 1));
        assert_eq!(next_beijing_midnight(before), before + 1);
        assert_eq!(next_beijing_midnight(before + 1), before + 1 + DAY_MS);
        assert_eq!(beijing_time(before), "2026-12-06 23:59");
        assert_eq!(beijing_time(before + 1), "2026-12-07 00:00");
        assert_eq!(beijing_time(0), "1970-01-01 08:00");
    }
}
