use super::*;

const TOO_BIG_FOR_THE_POOL: &str =
    r#"(component (core module (table 300000 funcref)) (core instance (instantiate 0)))"#;

const OPTIMIZED: &[Tier] = &[Tier::Optimized];
const FIRST_START: &[Tier] = &[Tier::Baseline, Tier::Optimized];

/// What a compiler process would answer, compiled in this one.
fn in_process(what: &str, wasm: &[u8], tiers: &[Tier], _: &mut Vec<String>) -> Compiled {
    let engines = compiler::engines(tiers).expect("engines");
    compiler::compile(&engines, what, wasm).into()
}

/// [`artefact`] on `cache`.
fn ask(
    cache: &ArtifactCache,
    what: &str,
    wasm: &[u8],
    tiers: &[Tier],
    notes: &mut Vec<String>,
    compile: &mut Compiler<'_>,
) -> Result<(Allocation, Tier, ArtifactKind, Artefact), String> {
    artefact(what, wasm, tiers, Some(cache), notes, compile)
}

/// The smallest command module.
const EMPTY_START: &[u8] = br#"(module (func (export "_start")))"#;

/// A new cache in a temporary directory (removed when the first is dropped).
fn fresh() -> (tempfile::TempDir, ArtifactCache) {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = cache(&tmp.path().join("c"));
    (tmp, cache)
}

fn cache(dir: &Path) -> ArtifactCache {
    ArtifactCache::open(&CacheConfig {
        dir: dir.to_path_buf(),
        max_bytes: crate::cache::DEFAULT_MAX_BYTES,
    })
    .expect("cache")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_miss_compiles_and_stores_and_a_hit_is_the_same_artefact() {
    let (_tmp, cache) = fresh();
    let wat = EMPTY_START;
    let mut notes = Vec::new();
    let (alloc, tier, kind, first) =
        ask(&cache, "m", wat, OPTIMIZED, &mut notes, &mut in_process).expect("compile");
    assert_eq!(
        (alloc, tier, kind),
        (Allocation::OnDemand, Tier::Optimized, ArtifactKind::Module)
    );
    assert_eq!(entries(cache.path()).len(), 1);
    let (_, _, _, second) =
        ask(&cache, "m", wat, OPTIMIZED, &mut notes, &mut in_process).expect("hit");
    assert_eq!(first, second);
    assert!(notes.is_empty(), "{notes:?}");
    let engine = engine::new_engine(alloc).expect("engine");
    assert!(
        matches!(second, Artefact::Bytes(_)),
        "no read-only view here"
    );
    assert!(engine::load_artefact(&engine, kind, second).is_ok());
}

#[test]
fn a_component_too_big_for_the_pool_is_cached_on_demand_and_not_recompiled() {
    let (_tmp, cache) = fresh();
    let wasm = TOO_BIG_FOR_THE_POOL.as_bytes();
    let mut notes = Vec::new();
    let (alloc, _, kind, _) =
        ask(&cache, "c", wasm, OPTIMIZED, &mut notes, &mut in_process).expect("compile");
    assert_eq!(
        (alloc, kind),
        (Allocation::OnDemand, ArtifactKind::Component)
    );
    let stored = entries(cache.path());
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].starts_with("component-ondemand-"), "{stored:?}");
    let path = cache.path().join(&stored[0]);
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("stat"));
    let before = ino(&path);
    let (alloc, _, _, _) =
        ask(&cache, "c", wasm, OPTIMIZED, &mut notes, &mut in_process).expect("hit");
    assert_eq!(alloc, Allocation::OnDemand);
    assert_eq!(ino(&path), before, "served from the cache, not rewritten");
    assert_eq!(
        entries(cache.path()),
        stored,
        "the pooled attempt stored nothing"
    );
}

#[test]
fn a_module_that_fails_is_remembered_and_not_compiled_again() {
    let (_tmp, cache) = fresh();
    let mut compiles = 0;
    let mut counting = |what: &str, wasm: &[u8], tiers: &[Tier], notes: &mut Vec<String>| {
        compiles += 1;
        in_process(what, wasm, tiers, notes)
    };
    let bad = b"\0asm\x01\0\0\0\x05";
    let first = ask(
        &cache,
        "bad",
        bad,
        FIRST_START,
        &mut Vec::new(),
        &mut counting,
    )
    .expect_err("invalid");
    let again = ask(
        &cache,
        "bad",
        bad,
        FIRST_START,
        &mut Vec::new(),
        &mut counting,
    )
    .expect_err("remembered");
    assert_eq!(compiles, 1, "compiled once");
    assert!(again.starts_with(&first), "{again}");
    assert!(again.contains("failed to compile on this node"), "{again}");
    let stored = entries(cache.path());
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].starts_with("module-failed-"), "{stored:?}");
}

#[test]
fn a_failure_of_the_node_is_not_held_against_the_module() {
    let (_tmp, cache) = fresh();
    let wat = EMPTY_START;
    let mut node_fails = |_: &str, _: &[u8], _: &[Tier], _: &mut Vec<String>| Compiled::Failed {
        detail: "no compile slot".into(),
        remember: false,
    };
    let e = ask(
        &cache,
        "m",
        wat,
        OPTIMIZED,
        &mut Vec::new(),
        &mut node_fails,
    )
    .expect_err("failed");
    assert_eq!(e, "no compile slot");
    assert!(entries(cache.path()).is_empty());
    ask(
        &cache,
        "m",
        wat,
        OPTIMIZED,
        &mut Vec::new(),
        &mut in_process,
    )
    .expect("compiles");
}

#[test]
fn an_answer_for_another_kind_is_refused_and_not_stored() {
    let (_tmp, cache) = fresh();
    let wat = EMPTY_START;
    // Another kind, or baseline code where only optimised code was asked for (a tier-up).
    for (allocation, tier, kind, refusal) in [
        (
            Allocation::Pooling,
            Tier::Optimized,
            ArtifactKind::Component,
            "not what was asked",
        ),
        (
            Allocation::OnDemand,
            Tier::Baseline,
            ArtifactKind::Module,
            "winch code, not what was asked",
        ),
    ] {
        let mut lying = |_: &str, _: &[u8], _: &[Tier], _: &mut Vec<String>| Compiled::Done {
            allocation,
            tier,
            kind,
            artefact: b"not an artefact".to_vec(),
        };
        let e = ask(&cache, "m", wat, OPTIMIZED, &mut Vec::new(), &mut lying).expect_err("refused");
        assert!(e.contains(refusal), "{e}");
    }
    assert!(entries(cache.path()).is_empty());
}

#[test]
fn a_first_start_gets_winch_code_and_the_next_the_optimised_code_once_built() {
    let (_tmp, cache) = fresh();
    let wat = EMPTY_START;
    let mut compiles = Vec::new();
    let mut counting = |what: &str, wasm: &[u8], tiers: &[Tier], notes: &mut Vec<String>| {
        compiles.push(tiers.to_vec());
        in_process(what, wasm, tiers, notes)
    };
    let mut notes = Vec::new();
    let (alloc, tier, kind, first) =
        ask(&cache, "m", wat, FIRST_START, &mut notes, &mut counting).expect("compile");
    assert_eq!(tier, Tier::Baseline);
    let stored = entries(cache.path());
    assert!(
        stored.len() == 1 && stored[0].starts_with("module-ondemand-winch-"),
        "{stored:?}"
    );
    // Winch code loads only in a Winch engine.
    let winch = engine::new_engine_for(alloc, Tier::Baseline).expect("engine");
    assert!(engine::load_artefact(&winch, kind, first).is_ok());
    // Before the tier-up: the next start gets the same Winch code, without compiling.
    let (_, tier, _, _) =
        ask(&cache, "m", wat, FIRST_START, &mut notes, &mut counting).expect("hit");
    assert_eq!(tier, Tier::Baseline);
    // The tier-up: optimised code only, stored beside it.
    let (_, tier, _, _) =
        artefact("m", wat, OPTIMIZED, Some(&cache), &mut notes, &mut counting).expect("tier-up");
    assert_eq!(tier, Tier::Optimized);
    assert_eq!(entries(cache.path()).len(), 2);
    // Every later start: the optimised code, without compiling.
    let (alloc, tier, kind, code) =
        ask(&cache, "m", wat, FIRST_START, &mut notes, &mut counting).expect("hit");
    assert_eq!(tier, Tier::Optimized);
    let cranelift = engine::new_engine_for(alloc, Tier::Optimized).expect("engine");
    assert!(engine::load_artefact(&cranelift, kind, code).is_ok());
    assert_eq!(compiles, vec![FIRST_START.to_vec(), OPTIMIZED.to_vec()]);
    assert!(notes.is_empty(), "{notes:?}");
}

#[test]
fn a_module_winch_refuses_is_compiled_by_cranelift_on_its_first_start() {
    let (_tmp, cache) = fresh();
    // Tail calls: Winch refuses them.
    let wat = br#"(module
            (func $loop (param i32) (result i32)
              (if (result i32) (i32.eqz (local.get 0))
                (then (i32.const 7))
                (else (return_call $loop (i32.sub (local.get 0) (i32.const 1))))))
            (func (export "_start") (drop (call $loop (i32.const 1000000)))))"#;
    let winch_only = compiler::compile(
        &compiler::engines(&[Tier::Baseline]).expect("engines"),
        "tail",
        wat,
    );
    assert!(
        matches!(&winch_only, Response::Invalid { .. }),
        "Winch compiles tail calls now: this test needs another module ({winch_only:?})"
    );
    let (_, tier, kind, code) = ask(
        &cache,
        "tail",
        wat,
        FIRST_START,
        &mut Vec::new(),
        &mut in_process,
    )
    .expect("compiled by Cranelift");
    assert_eq!(tier, Tier::Optimized);
    let stored = entries(cache.path());
    assert!(
        stored.len() == 1 && stored[0].starts_with("module-ondemand-"),
        "{stored:?}"
    );
    assert!(!stored[0].contains("winch"), "{stored:?}");
    let engine = engine::new_engine(Allocation::OnDemand).expect("engine");
    assert!(engine::load_artefact(&engine, kind, code).is_ok());
}
