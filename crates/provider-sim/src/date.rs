//! A calendar date and the ways Taiwanese agencies write it (ROC years, Gregorian, ISO).
//!
//! Kept here rather than pulling a date crate: the simulator needs only civil-day arithmetic and a
//! handful of agency formats, and it must never read the wall clock.

use std::fmt;

/// A Gregorian calendar date.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date {
    year: i32,
    month: u32,
    day: u32,
}

/// ROC year 1 is 1912.
const ROC_OFFSET: i32 = 1911;

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

impl Date {
    /// 2025-12-31 (the simulated population's default "today": `server::DEFAULT_REFERENCE_DATE`).
    pub(crate) const END_OF_2025: Date = Date {
        year: 2025,
        month: 12,
        day: 31,
    };

    /// A date, if it exists.
    pub fn new(year: i32, month: u32, day: u32) -> Option<Self> {
        ((1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month))
            .then_some(Self { year, month, day })
    }

    pub fn year(self) -> i32 {
        self.year
    }
    pub fn month(self) -> u32 {
        self.month
    }
    pub fn day(self) -> u32 {
        self.day
    }

    /// Days since 1970-01-01 (H. Hinnant's civil-day algorithm).
    pub fn to_days(self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The date `days` after 1970-01-01.
    pub fn from_days(days: i64) -> Self {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        // The ranges above keep month in 1..=12 and day in 1..=31; years stay far inside i32.
        Self {
            year: i32::try_from(year).unwrap_or(i32::MAX),
            month: u32::try_from(month).unwrap_or(1),
            day: u32::try_from(day).unwrap_or(1),
        }
    }

    pub fn add_days(self, days: i64) -> Self {
        Self::from_days(self.to_days() + days)
    }

    /// The same day `years` later (29 February becomes 28 February in common years).
    pub fn add_years(self, years: i32) -> Self {
        let year = self.year + years;
        let day = self.day.min(days_in_month(year, self.month));
        Self {
            year,
            month: self.month,
            day,
        }
    }

    /// Completed years of age on `on`.
    pub fn age_on(self, on: Date) -> i32 {
        let before_birthday = (on.month, on.day) < (self.month, self.day);
        on.year - self.year - i32::from(before_birthday)
    }

    pub fn roc_year(self) -> i32 {
        self.year - ROC_OFFSET
    }

    /// 戶政 and 公司: 7-digit ROC `yyymmdd`, e.g. `0691010`.
    pub fn roc7(self) -> String {
        format!("{:03}{:02}{:02}", self.roc_year(), self.month, self.day)
    }

    /// 親屬關係: `yyy/mm/dd`; years before 1912 are negative, e.g. `-01/02/12`.
    pub fn roc_slash(self) -> String {
        let y = self.roc_year();
        let year = if y < 1 {
            format!("-{:02}", 1 - y)
        } else {
            format!("{y:03}")
        };
        format!("{year}/{:02}/{:02}", self.month, self.day)
    }

    /// 低收 dates: 「107年08月13日」.
    pub fn roc_chinese(self) -> String {
        format!("{}年{:02}月{:02}日", self.roc_year(), self.month, self.day)
    }

    /// 低收 members' birthdays: `32/02/02` (ROC year without padding).
    pub fn roc_short_slash(self) -> String {
        format!("{}/{:02}/{:02}", self.roc_year(), self.month, self.day)
    }

    /// 車籍 birthday: `100-01-01`.
    pub fn roc_dash(self) -> String {
        format!("{}-{:02}-{:02}", self.roc_year(), self.month, self.day)
    }

    /// 國民年金: Gregorian `yyyymmdd`.
    pub fn yyyymmdd(self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// `yyyymm`.
    pub fn yyyymm(self) -> String {
        format!("{:04}{:02}", self.year, self.month)
    }

    /// ISO 8601 date.
    pub fn iso(self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// 車籍: ISO 8601 date-time at midnight Taiwan time.
    pub fn iso_taipei(self) -> String {
        format!("{}T00:00:00+08:00", self.iso())
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.iso())
    }
}

impl fmt::Debug for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Date({})", self.iso())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats() {
        let d = Date::new(1980, 10, 10).unwrap();
        assert_eq!(d.roc7(), "0691010");
        assert_eq!(d.roc_slash(), "069/10/10");
        assert_eq!(Date::new(1910, 2, 12).unwrap().roc_slash(), "-02/02/12");
        assert_eq!(
            Date::new(2018, 8, 13).unwrap().roc_chinese(),
            "107年08月13日"
        );
        assert_eq!(Date::new(1943, 2, 2).unwrap().roc_short_slash(), "32/02/02");
        assert_eq!(Date::new(2011, 1, 1).unwrap().roc_dash(), "100-01-01");
        assert_eq!(d.yyyymmdd(), "19801010");
        assert_eq!(Date::new(1970, 1, 1).unwrap().to_days(), 0);
        assert!(Date::new(2023, 2, 29).is_none());
        assert_eq!(
            Date::new(2024, 2, 29).unwrap().add_years(1).iso(),
            "2025-02-28"
        );
        assert_eq!(
            Date::new(1980, 10, 10)
                .unwrap()
                .age_on(Date::new(2026, 10, 9).unwrap()),
            45
        );
    }

    proptest! {
        #[test]
        fn days_round_trip(days in -60_000i64..60_000) {
            let d = Date::from_days(days);
            prop_assert_eq!(d.to_days(), days);
            prop_assert!(Date::new(d.year(), d.month(), d.day()).is_some());
        }
    }
}
