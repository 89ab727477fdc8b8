//! Calendar dates from day counts, with no time-zone database: the access log's UTC times and
//! the quota guard's Beijing days are both a fixed offset from Unix time.

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (the civil-from-days
/// algorithm of H. Hinnant's date library).
pub fn date_of_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        assert_eq!(date_of_days(0), (1970, 1, 1));
        assert_eq!(date_of_days(-1), (1969, 12, 31));
        assert_eq!(date_of_days(11_016), (2000, 2, 29));
        assert_eq!(date_of_days(20_793), (2026, 12, 6));
    }
}
