//! The Dockerfile subset: the real Dockerfiles parse, everything outside it is refused by line.
use super::*;

const REAL: [(&str, &str); 3] = [
    (
        "operator",
        include_str!("../../../images/operator.Dockerfile"),
    ),
    (
        "node-installer",
        include_str!("../../../images/node-installer.Dockerfile"),
    ),
    ("pause", include_str!("../../../images/pause.Dockerfile")),
];

fn copy(chmod: Option<u32>, sources: &[&str], dest: &str) -> Instruction {
    Instruction::Copy(Copy {
        chmod,
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.to_owned(),
    })
}

fn pairs(kv: &[(&str, &str)]) -> Vec<(String, String)> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn problem(text: &str) -> (usize, Problem) {
    let err = parse(text).expect_err(text);
    (err.line, err.problem)
}

#[test]
fn the_real_dockerfiles_parse() {
    for (name, text) in REAL {
        let parsed = parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let entrypoints: Vec<_> = parsed
            .instructions
            .iter()
            .filter(|(_, i)| matches!(i, Instruction::Entrypoint(_)))
            .collect();
        assert_eq!(entrypoints.len(), 1, "{name}");
    }
    let installer = parse(REAL[1].1).expect("node-installer");
    let body: Vec<&Instruction> = installer.instructions.iter().map(|(_, i)| i).collect();
    assert_eq!(
        body[..5],
        [
            &copy(
                None,
                &["wasmkube-node-installer", "containerd-shim-wasmkube-v1"],
                "/usr/local/bin/"
            ),
            &copy(
                None,
                &["check.wasm"],
                "/usr/local/share/wasmkube/check.wasm"
            ),
            &copy(None, &["bin/"], "/bin/"),
            &Instruction::User("0:0".into()),
            &Instruction::Entrypoint(vec!["/usr/local/bin/wasmkube-node-installer".into()]),
        ]
    );
    // The continued LABEL: quoted values with spaces, three pairs.
    assert_eq!(
        body[5],
        &Instruction::Label(pairs(&[
            ("org.opencontainers.image.title", "wasmkube node installer"),
            (
                "org.opencontainers.image.source",
                "https://github.com/wasmkube/wasmkube"
            ),
            ("org.opencontainers.image.licenses", "Apache-2.0"),
        ]))
    );
}

#[test]
fn accepts_the_whole_subset_with_line_numbers() {
    let text = "\
# syntax=docker/dockerfile:1
# a comment

from scratch
COPY --chmod=0750 a b /opt/
copy [\"with space\", \"/x y\"]
ENV A=1 B=\"two words\" C='single $quoted' D=a\\ b E=
WORKDIR /srv
WORKDIR app
USER nobody
CMD [\"--flag\"]
ENTRYPOINT [\"/app\", \"run\"]
LABEL k=v \\
  # a comment inside a continuation is dropped
  k2=v2
";
    let parsed = parse(text).expect("parse");
    assert_eq!(
        parsed.instructions,
        vec![
            (5, copy(Some(0o750), &["a", "b"], "/opt/")),
            (6, copy(None, &["with space"], "/x y")),
            (
                7,
                Instruction::Env(pairs(&[
                    ("A", "1"),
                    ("B", "two words"),
                    ("C", "single $quoted"),
                    ("D", "a b"),
                    ("E", ""),
                ]))
            ),
            (8, Instruction::Workdir("/srv".into())),
            (9, Instruction::Workdir("app".into())),
            (10, Instruction::User("nobody".into())),
            (11, Instruction::Cmd(vec!["--flag".into()])),
            (
                12,
                Instruction::Entrypoint(vec!["/app".into(), "run".into()])
            ),
            (13, Instruction::Label(pairs(&[("k", "v"), ("k2", "v2")]))),
        ]
    );
}

#[test]
fn refuses_instructions_outside_the_subset_naming_the_line() {
    for (keyword, line) in [
        ("RUN apt-get update", "RUN"),
        ("ADD https://example.com/x /x", "ADD"),
        ("ARG VERSION=1", "ARG"),
        ("EXPOSE 8080", "EXPOSE"),
        ("run true", "RUN"),
    ] {
        let text = format!("FROM scratch\nCOPY a /a\n\n{keyword}\n");
        let err = parse(&text).expect_err(keyword);
        assert_eq!(err.line, 4, "{keyword}");
        assert!(
            matches!(&err.problem, Problem::Unsupported { keyword: k, .. } if k == line),
            "{keyword}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with("line 4 `"), "{msg}");
        assert!(msg.contains(&format!("{line} is not supported")), "{msg}");
    }
    assert_eq!(
        problem("FROM scratch\nFROBNICATE x\n"),
        (
            2,
            Problem::Unknown {
                word: "FROBNICATE".into()
            }
        )
    );
}

#[test]
fn refuses_base_images_and_misplaced_from() {
    assert_eq!(
        problem("# base\nFROM debian:bookworm\n"),
        (
            2,
            Problem::BaseImage {
                image: "debian:bookworm".into()
            }
        )
    );
    let (line, p) = problem("FROM --platform=linux/arm64 scratch\n");
    assert_eq!(line, 1);
    assert!(
        matches!(&p, Problem::Flag { flag, .. } if flag == "--platform"),
        "{p}"
    );
    let (line, p) = problem("FROM scratch AS build\n");
    assert_eq!(line, 1);
    assert!(matches!(p, Problem::Malformed { .. }), "{p}");
    assert_eq!(
        problem("COPY a /a\nFROM scratch\n"),
        (1, Problem::FromFirst)
    );
    assert_eq!(
        problem("FROM scratch\nCOPY a /a\nFROM scratch\n"),
        (3, Problem::SecondFrom)
    );
    assert_eq!(problem("# nothing\n").1, Problem::NoFrom);
}

#[test]
fn refuses_shell_form_commands() {
    for (text, keyword) in [
        ("FROM scratch\nENTRYPOINT /app --flag\n", "ENTRYPOINT"),
        ("FROM scratch\nCMD [\"unterminated\"\n", "CMD"),
        ("FROM scratch\nCMD [1, 2]\n", "CMD"),
    ] {
        let (line, p) = problem(text);
        assert_eq!(line, 2, "{text}");
        assert_eq!(
            p,
            Problem::ShellForm {
                keyword: keyword.into()
            },
            "{text}"
        );
        assert!(p.to_string().contains("JSON form"), "{p}");
    }
}

#[test]
fn refuses_what_docker_would_build_differently() {
    type Check = fn(&Problem) -> bool;
    let cases: &[(&str, Check)] = &[
        (
            "COPY --chown=1:1 a /a",
            |p| matches!(p, Problem::Flag { flag, .. } if flag == "--chown"),
        ),
        (
            "COPY --from=build /a /a",
            |p| matches!(p, Problem::Flag { flag, .. } if flag == "--from"),
        ),
        ("COPY --chmod=999 a /a", |p| {
            matches!(p, Problem::Malformed { .. })
        }),
        ("COPY --chmod=755 --chmod=700 a /a", |p| {
            matches!(p, Problem::Flag { .. })
        }),
        ("COPY *.so /lib/", |p| {
            matches!(p, Problem::Malformed { .. })
        }),
        ("COPY a b /no-slash", |p| {
            matches!(p, Problem::Malformed { .. })
        }),
        ("COPY onlyone", |p| matches!(p, Problem::Malformed { .. })),
        ("COPY \"a b\" /c", |p| {
            matches!(p, Problem::Malformed { .. })
        }),
        ("COPY $BIN /bin/", |p| matches!(p, Problem::Variable { .. })),
        ("COPY <<EOF /x", |p| matches!(p, Problem::Malformed { .. })),
        ("ENV PATH=/bin:$PATH", |p| {
            matches!(p, Problem::Variable { .. })
        }),
        ("ENV A \"legacy form\"", |p| {
            matches!(p, Problem::Malformed { .. })
        }),
        ("ENV A=\"unterminated", |p| {
            matches!(p, Problem::Malformed { .. })
        }),
        ("LABEL =v", |p| matches!(p, Problem::Malformed { .. })),
        ("USER a b", |p| matches!(p, Problem::Malformed { .. })),
        ("USER ${UID}", |p| matches!(p, Problem::Variable { .. })),
        ("WORKDIR", |p| matches!(p, Problem::Malformed { .. })),
    ];
    for (instruction, expected) in cases {
        let text = format!("FROM scratch\n{instruction}\n");
        let (line, p) = problem(&text);
        assert_eq!(line, 2, "{instruction}");
        assert!(expected(&p), "{instruction}: {p}");
    }
}

#[test]
fn refuses_the_escape_directive_and_reports_continued_lines_by_their_first_line() {
    let (line, p) = problem("# escape=`\nFROM scratch\n");
    assert_eq!(line, 1);
    assert_eq!(
        p,
        Problem::Directive {
            name: "escape".into()
        }
    );
    // Not a directive once an instruction came first: an ordinary comment.
    parse("FROM scratch\n# escape=`\n").expect("comment");

    let (line, p) = problem("FROM scratch\n\nRUN apt-get update && \\\n    apt-get install -y x\n");
    assert_eq!(line, 3);
    assert!(matches!(p, Problem::Unsupported { .. }), "{p}");
    let err = parse(
        "FROM scratch\nRUN a very long command line that goes on and on and on and on and on\n",
    )
    .expect_err("long");
    assert!(err.text.ends_with('…'), "{}", err.text);
}
