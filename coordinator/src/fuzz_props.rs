//! Fuzzing as property tests, run by `.ci/run` for a bounded number of cases
//! (`PROPTEST_CASES` raises it): whatever a client sends or a config file says,
//! the coordinator answers with a result or an error naming the field, and never
//! panics. Targets: raw bytes through the request decoders, job specs as SubmitJob receives them (URLs of every kind,
//! NaN/infinite/negative/huge numbers, long style vectors), the segment planner
//! on any frame count, rate and keyframe list, storage URL parsing, the blob
//! trigger's naming, tokens files and the whole config loader on mutated TOML.

use crate::grpc::validate_spec;
use framewise_common::plan::plan_segments;
use framewise_common::proto as pb;
use framewise_common::storage::{parse, parse_prefix, Store};
use proptest::prelude::*;

fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "/[a-z0-9./ _-]{0,30}",
        "file://[a-z0-9./_-]{0,30}",
        "az://[a-zA-Z0-9-]{0,30}/[a-zA-Z0-9-]{0,70}/[a-z0-9./ _-]{0,30}",
        "https://[a-z0-9]{0,30}\\.blob\\.core\\.windows\\.net/[a-z0-9/.?=&-]{0,40}",
        "(http|https|s3|ftp)://[ -~]{0,40}",
    ]
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(1e300),
        Just(-0.0),
        -1e6..1e6f64,
        0.0..10.0f64,
    ]
}

fn spec() -> impl Strategy<Value = pb::JobSpec> {
    (
        url(),
        url(),
        prop::collection::vec(number().prop_map(|x| x as f32), 0..40),
        number(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(i, o, w, s, m, c)| pb::JobSpec {
            input_url: i,
            output_url: o,
            params: Some(pb::JobParams {
                style_weights: w,
                segment_seconds: s,
                max_size: m % 5000,
                crf: c % 80,
            }),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_job_spec_is_accepted_or_refused_naming_the_field(mut s in spec()) {
        let store = Store::default();
        match validate_spec(&mut s, &store, 1 << 30) {
            Ok(()) => {
                // What is accepted is canonical and plannable.
                let p = s.params.clone().unwrap_or_default();
                prop_assert!(p.segment_seconds.is_finite() && p.segment_seconds >= 0.0);
                prop_assert!(p.style_weights.iter().all(|w| w.is_finite() && *w >= 0.0));
                prop_assert!(parse(&s.input_url).is_ok() && parse(&s.output_url).is_ok());
            }
            Err(e) => prop_assert!(
                e.starts_with("spec.") || e.starts_with("params."),
                "an error must name the field: {e}"
            ),
        }
    }

    #[test]
    fn any_bytes_on_the_wire_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        use prost::Message;
        // What tonic hands the handlers comes from these decoders: garbage is an error.
        let _ = pb::SubmitJobRequest::decode(&bytes[..]);
        let _ = pb::CompleteChunkRequest::decode(&bytes[..]);
        let _ = pb::CompleteTaskRequest::decode(&bytes[..]);
        let _ = pb::RegisterRequest::decode(&bytes[..]);
        let _ = pb::HeartbeatRequest::decode(&bytes[..]);
        if let Ok(r) = pb::SubmitJobRequest::decode(&bytes[..]) {
            if let Some(mut s) = r.spec {
                let _ = validate_spec(&mut s, &Store::default(), 1 << 30);
            }
        }
    }

    #[test]
    fn any_segment_plan_tiles_the_video(
        frames in prop_oneof![0u64..3_000, 0u64..2_000_000],
        fps in number(),
        seconds in number(),
        keyframes in prop::collection::vec(0u64..2_000_000, 0..60),
    ) {
        let mut k = keyframes;
        k.sort_unstable();
        k.dedup();
        let segs = plan_segments(frames, fps, &k, seconds);
        let mut next = 0;
        for s in &segs {
            prop_assert_eq!(s.start, next, "gap or overlap");
            prop_assert!(s.end > s.start, "empty segment");
            next = s.end;
        }
        prop_assert_eq!(next, frames, "every frame planned");
    }

    #[test]
    fn storage_urls_parse_or_say_why_and_round_trip(u in url()) {
        for r in [parse(&u), parse_prefix(&u)] {
            match r {
                Ok(loc) => {
                    let canon = loc.url();
                    prop_assert_eq!(parse_prefix(&canon).ok(), Some(loc), "{} -> {}", u, canon);
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn trigger_outputs_stay_under_the_output_prefix(name in "[ -~]{0,40}") {
        let cfg = framewise_common::config::TriggerConfig {
            enabled: true,
            input_prefix: "az://acct/media/in/".into(),
            output_prefix: "az://acct/media/out/".into(),
            ..Default::default()
        };
        let input = format!("az://acct/media/in/{name}");
        if let Some(out) = crate::trigger::output_for(&cfg, &input) {
            prop_assert!(out.starts_with("az://acct/media/out/"));
            prop_assert!(out.ends_with(".mp4"));
        }
    }

    #[test]
    fn any_tokens_file_loads_or_names_the_problem(text in "[ -~\n]{0,200}") {
        let p = std::env::temp_dir().join(format!("fw-fuzz-tokens-{}", std::process::id()));
        std::fs::write(&p, &text).unwrap();
        if let Err(e) = crate::auth::Tokens::load(&p) {
            prop_assert!(e.to_string().contains("tokens file"));
        }
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn any_mutated_config_loads_or_names_the_file(
        lines in prop::collection::vec((0usize..200, "[ -~]{0,30}"), 0..6),
    ) {
        // The shipped coordinator config with random lines replaced by garbage.
        let base = include_str!("../../config/coordinator.toml");
        let mut v: Vec<String> = base.lines().map(str::to_string).collect();
        for (i, junk) in lines {
            let n = v.len();
            v[i % n] = junk;
        }
        let p = std::env::temp_dir().join(format!("fw-fuzz-config-{}.toml", std::process::id()));
        std::fs::write(&p, v.join("\n")).unwrap();
        if let Err(e) = framewise_common::config::Config::load(Some(&p)) {
            prop_assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        }
        let _ = std::fs::remove_file(&p);
    }
}
