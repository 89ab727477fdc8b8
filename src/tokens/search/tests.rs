use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn appid(s: &str) -> AppId {
    AppId::parse(s).unwrap()
}

/// No account.
const NONE: [AppId; 0] = [];

fn texts(found: Vec<AppId>) -> Vec<String> {
    found.iter().map(|a| a.as_str().to_string()).collect()
}

#[test]
fn a_search_looks_in_the_appid_and_the_account_names() {
    let mut search = Search::default();
    let (flat, nested) = (appid("wx1111111111111111"), appid("wx2222222222222222"));
    search.put(&flat, [Some("Coffee <Shop>"), None, None]);
    search.put(&nested, [None, None, Some("ACME Ltd")]);
    assert_eq!(search.find("1111"), [flat]);
    assert_eq!(search.find("coffee <s"), [flat]);
    assert_eq!(search.find("COFFEE"), [flat], "any case");
    assert_eq!(search.find("active"), NONE, "only the appid and the names are searched");
    assert_eq!(search.find("acme"), [nested]);
    assert_eq!(search.find("wx"), [flat, nested], "in appid order");
}

#[test]
fn each_name_is_searched_and_the_gh_id_too() {
    let mut search = Search::default();
    let a = appid("wx00000000000000aa");
    search.put(&a, [Some("Tea House"), Some("gh_0123456789ab"), Some("Leaf Co")]);
    for q in ["tea h", "gh_0123", "6789ab", "leaf co", "00aa"] {
        assert_eq!(search.find(q), [a], "{q}");
    }
}

#[test]
fn a_renamed_account_is_found_by_its_new_name_and_its_old_trigrams_are_gone() {
    let mut search = Search::default();
    let a = appid("wx1111111111111111");
    search.put(&a, [Some("Old Bakery"), None, None]);
    let before = search.postings.len();
    search.put(&a, [Some("New Bakery"), None, None]);
    assert_eq!(search.find("old"), NONE);
    assert_eq!(search.find("new bak"), [a]);
    assert_eq!(search.find("bakery"), [a]);
    // "old", "ld ", "d b" went; "new", "ew ", "w b" came.
    assert_eq!(search.postings.len(), before);
    assert!(search.postings.get(trigrams_of("old")[0]).is_none());
    // The appid's own trigrams stay, even one the names also had.
    search.put(&a, [Some("111"), None, None]);
    search.put(&a, [None, None, None]);
    assert_eq!(search.find("111"), [a]);
    assert_eq!(search.postings.len(), trigrams_of(&a.as_str()).len());
}

#[test]
fn a_forgotten_account_is_found_no_more_and_leaves_nothing_behind() {
    let mut search = Search::default();
    let (a, b) = (appid("wx1111111111111111"), appid("wx2222222222222222"));
    search.put(&a, [Some("Shared Name"), None, None]);
    search.put(&b, [Some("Shared Name"), Some("gh_222222222222"), None]);
    search.remove(&a);
    assert_eq!(search.find("shared"), [b]);
    assert_eq!(search.find("1111"), NONE);
    search.remove(&b);
    search.remove(&b);
    assert_eq!(search.find("shared"), NONE);
    assert!(search.postings.is_empty() && search.ids.is_empty());
    assert!(search.postings.get(trigrams_of("shared")[0]).is_none());
    // The freed places are taken again.
    search.hold(&a);
    search.hold(&b);
    assert_eq!(search.docs.len(), 2);
    assert_eq!(search.find("wx"), [a, b]);
}

#[test]
fn chinese_names_are_searched_by_characters() {
    let mut search = Search::default();
    let (a, b) = (appid("wx1111111111111111"), appid("wx2222222222222222"));
    search.put(&a, [Some("腾讯咖啡"), None, Some("深圳市腾讯计算机系统有限公司")]);
    search.put(&b, [Some("咖啡馆"), None, Some("广州市某某餐饮有限公司")]);
    // Three characters are one trigram, though nine bytes.
    assert_eq!(trigrams_of("深圳市").len(), 1);
    assert_eq!(search.find("腾讯计算机"), [a]);
    assert_eq!(search.find("有限公司"), [a, b]);
    assert_eq!(search.find("咖啡"), [a, b], "two characters");
    assert_eq!(search.find("馆"), [b], "one character");
    assert_eq!(search.find("咖啡馆"), [b]);
    assert_eq!(search.find("腾讯咖啡馆"), NONE);
}

#[test]
fn short_queries_are_checked_against_every_account() {
    let mut search = Search::default();
    let (a, b) = (appid("wx1111111111111111"), appid("wx2222222222222222"));
    search.put(&a, [Some("Ab"), None, None]);
    search.hold(&b);
    assert_eq!(search.find("a"), [a]);
    assert_eq!(search.find("AB"), [a]);
    assert_eq!(search.find("2"), [b]);
    assert_eq!(search.find("x2"), [b]);
    assert_eq!(search.find("wx"), [a, b]);
    assert_eq!(search.find("q"), NONE);
}

#[test]
fn an_account_without_info_is_found_by_its_appid_and_keeps_names_taken_before() {
    let mut search = Search::default();
    let a = appid("wx0123456789abcdef");
    search.hold(&a);
    assert_eq!(search.find("789abc"), [a]);
    search.put(&a, [Some("Named"), None, None]);
    search.hold(&a);
    assert_eq!(search.find("named"), [a]);
    assert_eq!(search.docs.len(), 1);
}

#[test]
fn trigrams_met_apart_or_across_two_names_find_nothing() {
    let mut search = Search::default();
    let a = appid("wx1111111111111111");
    // "abc" and "bcd" are both there, but "abcd" is not.
    search.put(&a, [Some("abcxbcd"), Some("xyz"), Some("zab")]);
    assert_eq!(search.find("abcd"), NONE);
    // The fields are not one text: "xyz" then "zab" is not "xyzab".
    assert_eq!(search.find("yzza"), NONE);
    assert_eq!(search.find("xyzab"), NONE);
    assert_eq!(search.find("\0"), NONE, "the separator is in no name");
    assert_eq!(search.find("cxbc"), [a]);
}

/// Builds `n` accounts shaped like a Chinese fleet's: random appids and `gh_` ids, nick names
/// of one to three words and company names of a city, one or two words and a suffix, the words
/// of two characters drawn from 3,500 (3,000 words: more varied than real names, which share
/// far more words, so the figure errs high), and one nick name in five of random characters.
fn fleet(n: usize) -> Search {
    let mut rng = StdRng::seed_from_u64(25);
    let pool: Vec<char> = (0..3500).filter_map(|i| char::from_u32(0x4e00 + i * 5)).collect();
    let chars =
        |rng: &mut StdRng, len: usize| -> String { (0..len).map(|_| pool[rng.gen_range(0..pool.len())]).collect() };
    let words: Vec<String> = (0..3000).map(|_| chars(&mut rng, 2)).collect();
    let cities: Vec<String> = (0..60).map(|_| chars(&mut rng, 2)).collect();
    let suffixes = ["有限公司", "科技有限公司", "餐饮管理有限公司", "工作室", "商贸有限公司"];
    let pick = |rng: &mut StdRng, count: usize| -> String {
        (0..count).map(|_| words[rng.gen_range(0..words.len())].as_str()).collect()
    };
    let mut search = Search::default();
    for _ in 0..n {
        let id = appid(&format!("wx{:016x}", rng.gen::<u64>()));
        let (random, len) = (rng.gen_bool(0.2), rng.gen_range(1..4));
        let nick = match random {
            true => chars(&mut rng, len * 2 + 2),
            false => pick(&mut rng, len),
        };
        let user_name = format!("gh_{:012x}", rng.gen::<u64>() >> 16);
        let principal = match rng.gen_bool(0.2) {
            true => "个人".to_string(),
            false => {
                let (city, many) = (&cities[rng.gen_range(0..cities.len())], rng.gen_range(1..3));
                format!("{city}{}{}", pick(&mut rng, many), suffixes[rng.gen_range(0..suffixes.len())])
            }
        };
        search.put(&id, [Some(&nick), Some(&user_name), Some(&principal)]);
    }
    search.shrink();
    search
}

/// What the index holds on the heap, in bytes: its tables (hashbrown's slots and control
/// bytes), its documents and its postings, without the allocator's rounding.
fn heap_bytes(search: &Search) -> usize {
    let ids = (search.ids.capacity() * 8 / 7).next_power_of_two() * (std::mem::size_of::<(AppId, DocId)>() + 1);
    let docs = search.docs.capacity() * std::mem::size_of::<Option<Doc>>()
        + search.docs.iter().flatten().map(|d| d.names.len()).sum::<usize>();
    ids + docs + search.postings.heap_bytes() + search.free.capacity() * 4
}

#[test]
fn memory_per_account_stays_modest() {
    let n = 20_000;
    let search = fleet(n);
    let per_account = heap_bytes(&search) / n;
    eprintln!("{per_account} bytes an account, {} trigrams, for {n} accounts", search.postings.len());
    assert!(per_account < 450, "{per_account} bytes an account");
}

/// Run by hand for the figure in the module's comment (`--run-ignored all --no-capture`): 100k
/// accounts take some seconds unoptimized.
#[test]
#[ignore]
fn memory_for_100k_accounts() {
    let search = fleet(100_000);
    let bytes = heap_bytes(&search);
    eprintln!("{} bytes an account, {} MiB, {} trigrams", bytes / 100_000, bytes >> 20, search.postings.len());
    // How long a query takes here (unoptimized: a release build is many times faster).
    for q in ["个人", "有限公司", "gh_12", "wx00", "7", "nobody"] {
        let started = std::time::Instant::now();
        let found = search.find(q).len();
        eprintln!("{q:?}: {found} found in {:?}", started.elapsed());
    }
}

mod against_a_scan {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(proptest::string::string_regex("[ab1咖啡 A]{0,6}").unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever is put, renamed and removed, the index finds what a scan of every name finds.
        #[test]
        fn the_index_finds_what_a_scan_finds(
            accounts in proptest::collection::vec((0u64..6, name(), name(), name(), any::<bool>()), 1..20),
            q in proptest::string::string_regex("[ab1咖啡 Axw]{1,4}").unwrap(),
        ) {
            let mut search = Search::default();
            let mut held: std::collections::BTreeMap<AppId, Vec<String>> = Default::default();
            for (n, nick, user, principal, gone) in accounts {
                let a = appid(&format!("wx{:016x}", 0xab1 * n));
                match gone {
                    true => {
                        search.remove(&a);
                        held.remove(&a);
                    }
                    false => {
                        search.put(&a, [nick.as_deref(), user.as_deref(), principal.as_deref()]);
                        held.insert(a, [nick, user, principal].into_iter().flatten().collect());
                    }
                }
            }
            let q = q.to_lowercase();
            let scanned: Vec<AppId> = held
                .iter()
                .filter(|(a, names)| a.as_str().contains(&q) || names.iter().any(|n| n.to_lowercase().contains(&q)))
                .map(|(a, _)| *a)
                .collect();
            prop_assert_eq!(texts(search.find(&q)), texts(scanned));
        }
    }
}
