//! The layering of `src/lib.rs`'s "Layers" list holds: every `crate::` path in `src/` (a `use`
//! line or a path written inline, outside comments) names a module of a lower layer than the
//! file's own module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layer of each module, from the numbered lines of lib.rs's "# Layers" section.
fn layers(lib: &str) -> BTreeMap<String, usize> {
    let section = lib.split("//! # Layers").nth(1).expect("lib.rs has a # Layers section");
    let mut layers = BTreeMap::new();
    for line in section.lines().skip(1).take_while(|l| l.starts_with("//!")) {
        let Some((number, modules)) = line.trim_start_matches("//!").trim().split_once(". ") else { continue };
        let Ok(layer) = number.parse::<usize>() else { continue };
        for module in modules.split(',').map(|m| m.trim().trim_matches('`')) {
            assert!(layers.insert(module.to_owned(), layer).is_none(), "{module} is listed twice");
        }
    }
    layers
}

/// The crate's modules that `path`'s code names (`crate::x`, `crate::{x, y::z}`), comments left out.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names = match rest.strip_prefix('{') {
                Some(group) => group.split('}').next().unwrap_or_default().split(',').map(str::trim).collect(),
                None => vec![rest],
            };
            for name in names {
                let module: String = name.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !module.is_empty() {
                    named.insert(module);
                }
            }
        }
    }
    named
}

/// Every import against the layers: (file, its module, the module it names, why).
fn violations(files: &[(String, String)], layers: &BTreeMap<String, usize>) -> Vec<String> {
    let mut found = Vec::new();
    for (path, code) in files {
        let own = path.trim_start_matches("src/").split(['/', '.']).next().unwrap_or_default();
        let Some(&own_layer) = layers.get(own) else { continue };
        for module in named_modules(code) {
            match layers.get(&module) {
                Some(&layer) if module != own && layer >= own_layer => {
                    found.push(format!("{path}: {own} (layer {own_layer}) names {module} (layer {layer})"))
                }
                _ => {}
            }
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn every_import_runs_down_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let layers = layers(&lib);
    // Every module lib.rs declares has a layer, and no layer names a module that is not there.
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ").or_else(|| l.strip_prefix("mod ")))
        .map(|m| m.trim_end_matches(';').to_owned())
        .collect();
    assert_eq!(declared, layers.keys().cloned().collect::<BTreeSet<_>>(), "lib.rs's modules and its layers");

    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    files.retain(|(path, _)| path != "src/lib.rs" && path != "src/main.rs");
    let crossing: usize = files
        .iter()
        .map(|(path, code)| {
            let own = path.trim_start_matches("src/").split(['/', '.']).next().unwrap_or_default();
            named_modules(code).iter().filter(|m| m.as_str() != own && layers.contains_key(*m)).count()
        })
        .sum();
    assert!(crossing > 100, "the check read the crate's imports ({crossing} between modules)");
    let found = violations(&files, &layers);
    assert!(found.is_empty(), "imports against the layers of src/lib.rs:\n{}", found.join("\n"));
}

/// The check is not vacuous: an import up the layers, or within one, is caught, in a `use`
/// line, a group or a path written inline; one down the layers or in a comment is not.
#[test]
fn an_upward_import_is_caught() {
    let layers = layers("//! # Layers\n//!\n//! 2. `proxy`\n//! 1. `tokens`, `reply`\n//! 0. `xml`\n");
    let file = |path: &str, code: &str| (path.to_owned(), code.to_owned());
    let files = [
        file("src/tokens/mod.rs", "use crate::proxy::Gateway;\nuse crate::xml;"),
        file("src/tokens/slot.rs", "use crate::{xml::Fields, reply};"),
        file("src/tokens/events.rs", "fn f() { crate::proxy::go(); }"),
        file("src/proxy/mod.rs", "use crate::tokens::TokenService;\n// crate::nothing::here\n"),
        file("src/xml.rs", "/// see [`crate::proxy`]\nfn f() {}"),
    ];
    let found = violations(&files, &layers);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(found[0].contains("src/tokens/mod.rs: tokens (layer 1) names proxy (layer 2)"), "{found:#?}");
    assert!(found[1].contains("names reply (layer 1)"), "{found:#?}");
    assert!(found[2].contains("src/tokens/events.rs"), "{found:#?}");
}
