//! WeChat's release-check (全网发布) test accounts: a leaf that the token service (which never
//! keeps them), the release check (which answers them) and the sandbox (which plays them) share.

use crate::AppId;

/// WeChat's test accounts, appid and original id: five official accounts, then five mini programs.
pub const TEST_ACCOUNTS: [(&str, &str); 10] = [
    ("wx570bc396a51b8ff8", "gh_3c884a361561"),
    ("wx9252c5e0bb1836fc", "gh_c0f28a78b318"),
    ("wx8e1097c5bc82cde9", "gh_3f222ed8d140"),
    ("wx14550af28c71a144", "gh_26128078e9ab"),
    ("wxa35b9c23cfe664eb", "gh_2b3713f184a6"),
    ("wxd101a85aa106f53e", "gh_8dad206e9538"),
    ("wxc39235c15087f6f3", "gh_905ae9d01059"),
    ("wx7720d01d4b2a4500", "gh_393666f1fdf4"),
    ("wx05d483572dcd5d8b", "gh_39abb5d4e1b7"),
    ("wx5910277cae6fd970", "gh_7818dcb60240"),
];

pub fn is_test_account(appid: &AppId) -> bool {
    TEST_ACCOUNTS.iter().any(|(a, _)| *a == appid.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_test_account_is_known_and_valid() {
        for (appid, gh) in TEST_ACCOUNTS {
            assert!(is_test_account(&AppId::parse(appid).unwrap()), "{appid}");
            assert!(gh.starts_with("gh_") && gh.len() == 15, "{gh}");
        }
        assert!(!is_test_account(&AppId::parse("wx1111111111111111").unwrap()));
    }
}
