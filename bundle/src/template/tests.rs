use super::*;

fn env() -> BTreeMap<String, String> {
    [
        ("A", "x"),
        ("PORT", "2379"),
        ("EMPTY", ""),
        ("CRI", "containerd"),
        ("VER", "v1.27.7"),
        ("LINES", "a\nb"),
        ("COLON", "a: b"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn renders_the_sealos_subset() {
    let cases = [
        ("a={{ .A }} b={{ .B }}|", "a=x b=|"),
        (
            "{{ .B | default \"d\" }} {{ default \"d2\" .A }} {{ .EMPTY | default \"e\" }}",
            "d x e",
        ),
        ("{{ if eq .A \"x\" }}yes{{ else }}no{{ end }}", "yes"),
        (
            "{{ if .B }}b{{ else if eq .PORT \"2379\" }}port{{ else }}none{{ end }}",
            "port",
        ),
        ("{{ if not .B }}nob{{ end }}", "nob"),
        ("{{ if and .A (eq .PORT \"1\") }}1{{ else }}0{{ end }}", "0"),
        (
            "{{ if ne (default \"z\" .B) \"z\" }}set{{ else }}unset{{ end }}",
            "unset",
        ),
        ("a\n  {{- .A -}}  \nb", "axb"),
        ("{{/* a comment */}}k", "k"),
        ("{{ .A | upper | quote }}", "\"X\""),
        ("{{ `raw}}` }}", "raw}}"),
        // sprig, as labring's images use it.
        ("{{ if contains \"containerd\" .CRI }}c{{ end }}", "c"),
        ("{{ if hasPrefix \"v1.2\" .VER }}p{{ end }}{{ if hasSuffix \".7\" .VER }}s{{ end }}", "ps"),
        ("{{ .VER | trimPrefix \"v\" }} {{ trimSuffix \".7\" .VER }}", "1.27.7 v1.27"),
        ("{{ replace \".\" \"-\" .VER }} {{ .A | squote }}", "v1-27-7 'x'"),
        ("{{ .A | b64enc }} {{ \"eA==\" | b64dec }}", "eA== x"),
        ("k:{{ .LINES | nindent 2 }}\n{{ indent 1 .A }}", "k:\n  a\n  b\n x"),
        ("{{ .A | toYaml }} {{ .COLON | toYaml }}", "x 'a: b'"),
        ("{{ if semverCompare \">=1.26.0-0\" .VER }}new{{ else }}old{{ end }}", "new"),
        ("{{ if semverCompare \"<1.26\" .VER }}old{{ else }}new{{ end }}", "new"),
        ("{{ if semverCompare \"^1.27\" .VER }}1{{ end }}{{ if semverCompare \"~1.27.2\" .VER }}2{{ end }}{{ if semverCompare \"1.27.x\" .VER }}3{{ end }}", "123"),
        ("{{ if semverCompare \">= 1.20, < 1.27\" .VER }}in{{ else }}out{{ end }}", "out"),
        ("{{ if semverCompare \"<1.20 || >=1.27\" .VER }}either{{ end }}", "either"),
        ("{{ if semverCompare \"1.27.7\" .VER }}exact{{ end }}{{ if semverCompare \"1.27.6\" .VER }}no{{ end }}", "exact"),
        ("{{ if semverCompare \">=1.25\" (default \"1.24\" .NONE) }}y{{ else }}n{{ end }}", "n"),
        // A field of a string is missing (Go would fail); `.` is the dot, `$` the root.
        ("{{ .A.B }}|{{ .A.B | default \"d\" }}", "|d"),
        ("{{ range splitList \",\" \"a,b\" }}[{{ . }}]{{ end }}", "[a][b]"),
        ("{{ range $k, $v := . }}{{ if hasPrefix \"C\" $k }}{{ $k }}={{ $v }};{{ end }}{{ end }}", "COLON=a: b;CRI=containerd;"),
        ("{{ env \"A\" }}|{{ env \"NOPE\" }}|{{ $.PORT }}", "x||2379"),
        ("{{ $x := .A }}{{ $x }}{{ $x = \"y\" }}{{ $x }}{{ with $x := \"z\" }}{{ $x }}{{ end }}{{ $x }}", "xyzy"),
        ("{{ with .A }}{{ . }}{{ end }}{{ with .B }}b{{ else }}nob{{ end }}", "xnob"),
        ("{{ if 0 }}a{{ else }}b{{ end }}{{ if 1 }}c{{ end }}{{ 0 | default 5 }}", "bc5"),
        ("{{ if $v := .PORT }}{{ $v }}{{ end }}", "2379"),
        ("{{ .VER | splitList \".\" | join \"-\" }} {{ len .VER }} {{ len (split \".\" .VER) }}", "v1-27-7 7 3"),
        ("{{ list 1 \"a\" true nil }} {{ dict \"k\" \"v\" \"odd\" }}", "[1 a true <nil>] map[k:v odd:]"),
        ("{{ or .B .EMPTY }}|{{ and .A .PORT }}|{{ or .B (required \"short-circuit\" .A) }}|{{ and .B (required \"never\" .B) }}", "|2379|x|"),
        ("{{ toJson (dict \"a\" (list 1 \"<b>\")) }}", "{\"a\":[1,\"\\u003cb\\u003e\"]}"),
        ("{{ true | toYaml }} {{ .NONE | toYaml }}", "true ''"),
    ];
    for (src, want) in cases {
        assert_eq!(render(src, &env()).unwrap(), want, "{src}");
    }
}

#[test]
fn errors_name_the_line() {
    let cases = [
        ("a\nb\n{{ .A ", "line 3: unclosed action: `{{` without `}}`"),
        ("l1\n{{ if .A }}x", "line 2: `if` without a matching `end`"),
        ("x\n\n{{ end }}", "line 3: unexpected `end` without a matching `if`"),
        ("{{ .A }}\n{{ nosuch .A }}", "line 2: function `nosuch` not defined; available: default, eq, ne, not, and, or, lower, upper, trim, quote, contains, hasPrefix, hasSuffix, trimPrefix, trimSuffix, replace, squote, b64enc, b64dec, indent, nindent, toYaml, semverCompare, env, split, splitList, join, index, len, toString, empty, required, hasKey, list, dict, toJson, int, int64, printf, ipAt, ipNet"),
        ("{{ define \"x\" }}{{ end }}", "line 1: `define` is not supported in berth templates"),
        ("{{ range }}{{ end }}", "line 1: missing value for `range`"),
        ("x\n{{ with .A }}y", "line 2: `with` without a matching `end`"),
        ("{{ range .A }}{{ else }}{{ else }}{{ end }}", "line 1: a second `else` in one `range`"),
        ("{{ with .A }}{{ else if .B }}{{ end }}", "line 1: `else` in `with` takes no arguments"),
        ("a\n{{ required \"need B\" .B }}", "line 2: need B"),
        ("{{ range .A }}{{ end }}", "line 1: `range` cannot iterate over a string (`x`); split a string into a list with `splitList`"),
        ("{{ $x }}", "line 1: undefined variable `$x`"),
        ("{{ if .A }}{{ $x := 1 }}{{ end }}{{ $x }}", "line 1: undefined variable `$x`"),
        ("{{ $x = 1 }}", "line 1: undefined variable `$x`"),
        ("{{ .A := 1 }}", "line 1: only a variable (`$name`) can be declared or assigned"),
        ("{{ $i, $v := .A }}", "line 1: only `range` declares two variables"),
        ("{{ index (splitList \",\" .A) 3 }}", "line 1: `index` 3 is out of range (length 1)"),
        ("{{ index .A \"k\" }}", "line 1: `index` of a string needs an integer, got `k`"),
        ("{{ len true }}", "line 1: `len` of a boolean (`true`)"),
        ("{{ .A. }}", "line 1: a `.` in a field chain must be followed by a name"),
        ("{{ break }}", "line 1: `break` is not supported in berth templates"),
        ("{{ default .A }}", "line 1: `default` takes 2 argument(s), got 1"),
        ("{{ \"abc }}", "line 1: unclosed action: `{{` without `}}`"),
        ("{{ indent .A .A }}", "line 1: `indent` needs a number of spaces, got `x`"),
        ("{{ semverCompare \">=1\" .A }}", "line 1: `semverCompare`: `x` is not a version: unexpected character 'x' while parsing major version number"),
        ("{{ semverCompare \"!!\" .PORT }}", "line 1: `semverCompare`: `!!`: an empty constraint"),
        ("{{ replace \"a\" }}", "line 1: `replace` takes 3 argument(s), got 1"),
        ("{{ \"%%\" | b64dec }}", "line 1: `b64dec`: not base64: Invalid symbol 37, offset 0."),
    ];
    for (src, want) in cases {
        assert_eq!(render(src, &env()).unwrap_err().to_string(), want, "{src}");
    }
}
fn clusterfile_data() -> serde_json::Value {
    serde_json::json!({"Values": {
        "masters": ["10.0.0.1", "10.0.0.2"],
        "nodes": [],
        "images": ["labring/kubernetes:v1.27.7", "labring/helm:v3.9.4"],
        "ssh": {"user": "root", "port": 22},
        "podCIDR": "100.64.0.0/10",
        "enabled": true,
        "hosts": [{"ips": ["10.0.0.1"], "roles": ["master", "amd64"]}],
        "ratio": 1.5,
        "million": 1_000_000.0,
        "nothing": null,
    }})
}

#[test]
fn renders_clusterfile_templates() {
    let data = clusterfile_data();
    let env = |name: &str| (name == "SSH_PASSWORD").then(|| "s3cret".to_string());
    let cases = [
        (
            "masters:{{- range .Values.masters }}\n  - {{ . }}{{ end }}",
            "masters:\n  - 10.0.0.1\n  - 10.0.0.2",
        ),
        (
            "{{ range $i, $ip := .Values.masters }}{{ $i }}={{ $ip }};{{ end }}",
            "0=10.0.0.1;1=10.0.0.2;",
        ),
        ("{{ range $ip := .Values.masters }}{{ $ip }} {{ end }}", "10.0.0.1 10.0.0.2 "),
        (
            "{{ range .Values.nodes }}{{ . }}{{ else }}no nodes{{ end }}{{ range .Values.missing }}x{{ else }}, none{{ end }}",
            "no nodes, none",
        ),
        (
            "{{ with .Values.ssh }}{{ .user }}@:{{ .port }}{{ end }}{{ with .Values.missing }}x{{ else }} none{{ end }}",
            "root@:22 none",
        ),
        (
            "hosts:{{ toYaml .Values.hosts | nindent 2 }}",
            "hosts:\n  - ips:\n    - 10.0.0.1\n    roles:\n    - master\n    - amd64",
        ),
        (
            "ssh:\n{{ toYaml .Values.ssh | indent 2 }}\n{{ toYaml .Values.nodes }} {{ toYaml .Values.ssh.port }} {{ toYaml .Values.podCIDR }}",
            "ssh:\n  port: 22\n  user: root\n[] 22 100.64.0.0/10",
        ),
        ("{{ env \"SSH_PASSWORD\" }}|{{ env \"NOPE\" }}|", "s3cret||"),
        (
            "{{ .Values.missing | default \"x\" }} {{ .Values.nodes | default \"none\" }} {{ .Values.nothing | default \"null\" }}",
            "x none null",
        ),
        ("{{ index .Values.images 1 }}", "labring/helm:v3.9.4"),
        ("{{ index .Values.hosts 0 \"roles\" 1 }}|{{ index .Values \"missing\" }}|", "amd64||"),
        ("{{ len .Values.images }} {{ len .Values.ssh }} {{ len .Values.nodes }}", "2 2 0"),
        ("{{ join \",\" .Values.masters }}", "10.0.0.1,10.0.0.2"),
        (
            "{{ printf \"%s:53\" .Values.podCIDR }} {{ printf \"%d%% %q %v\" 5 \"a\" .Values.enabled }} {{ printf \"%s\" }}",
            "100.64.0.0/10:53 5% \"a\" true %!s(MISSING)",
        ),
        (
            "{{ ipAt \"10.96.0.0/18\" 10 }} {{ ipAt (default \"10.96.0.0/18\" .Values.none) 10 }} {{ ipNet \"10.96.3.4/18\" }} {{ ipAt \"10.0.0.0/30\" 9 }} {{ ipNet \"bad\" }}",
            "10.96.0.10 10.96.0.10 10.96.0.0/18 out of ip address range invalid cidr: invalid CIDR address: bad",
        ),
        // sealos's own Clusterfile template: `default 22 .Values.ssh.port | int`.
        (
            "{{ default 22 .Values.ssh.port | int }} {{ \"2.9\" | int }} {{ int \"x\" }} {{ int true }} {{ default 22 .Values.nope | int64 }}",
            "22 2 0 1 22",
        ),
        ("{{ (split \":\" (index .Values.images 0))._1 }}", "v1.27.7"),
        (
            "{{ $p := split \":\" (index .Values.images 0) }}{{ $p._0 }}",
            "labring/kubernetes",
        ),
        (
            "{{ range .Values.masters }}{{ $.Values.podCIDR }};{{ end }}",
            "100.64.0.0/10;100.64.0.0/10;",
        ),
        (
            "{{ if and .Values.enabled (eq .Values.ssh.port 22) }}yes{{ else }}no{{ end }}",
            "yes",
        ),
        (
            "{{ range $k, $v := .Values.ssh }}{{ $k }}={{ $v }} {{ end }}",
            "port=22 user=root ",
        ),
        (
            "{{ (index .Values.hosts 0).roles }} {{ .Values.ssh }} {{ .Values.nodes }}",
            "[master amd64] map[port:22 user:root] []",
        ),
        (
            "{{ toJson .Values.ssh }} {{ .Values.hosts | toJson }}",
            r#"{"port":22,"user":"root"} [{"ips":["10.0.0.1"],"roles":["master","amd64"]}]"#,
        ),
        (
            "{{ if hasKey .Values.ssh \"user\" }}y{{ end }}{{ if empty .Values.nodes }}e{{ end }}{{ if not (hasKey .Values.ssh \"x\") }}n{{ end }}",
            "yen",
        ),
        (
            "{{ $l := list \"a\" 1 }}{{ toYaml (dict \"k\" $l \"b\" true) }}",
            "b: true\nk:\n- a\n- 1",
        ),
        ("{{ .Values.ssh.port | toString | quote }}", "\"22\""),
        ("{{ .Values.ratio }} {{ .Values.million }}", "1.5 1e+06"),
        ("{{ .Values.hosts.ips }}|{{ .Values.podCIDR.x }}|{{ .Values.nothing }}|", "|||"),
        (
            "{{ $found := false }}{{ range .Values.masters }}{{ if eq . \"10.0.0.2\" }}{{ $found = true }}{{ end }}{{ end }}{{ $found }}",
            "true",
        ),
        (
            "{{ range .Values.hosts }}{{ range .roles }}{{ . }}@{{ index $.Values.masters 0 }} {{ end }}{{ end }}",
            "master@10.0.0.1 amd64@10.0.0.1 ",
        ),
        ("{{ required \"need masters\" .Values.masters | len }}", "2"),
    ];
    for (src, want) in cases {
        assert_eq!(render_data(src, &data, &env).unwrap(), want, "{src}");
        assert!(check(src).is_ok(), "{src}");
    }
    let err = |src: &str| render_data(src, &data, &env).unwrap_err().to_string();
    assert_eq!(
        err("a: 1\nb: {{ required \"need x\" .Values.x }}"),
        "line 2: need x"
    );
    assert_eq!(
        err("{{ index .Values.images 2 }}"),
        "line 1: `index` 2 is out of range (length 2)"
    );
    assert_eq!(
        err("{{ range .Values.ssh.port }}{{ end }}"),
        "line 1: `range` cannot iterate over a number (`22`)"
    );
}

#[test]
fn clusterfile_templates_are_bounded() {
    let data = serde_json::json!({"Values": {
        "big": (0..200_000).collect::<Vec<u32>>(),
        "few": (0..1000).collect::<Vec<u32>>(),
        "long": "y".repeat(100),
        "huge": "z".repeat(2 << 20),
    }});
    let none = |_: &str| None;
    let err = |src: &str| render_data(src, &data, &none).unwrap_err().to_string();
    // A long list, and nested ranges with empty bodies.
    assert_eq!(
        err("{{ range .Values.big }}{{ end }}"),
        "line 1: `range` iterations exceed the limit of 100000 per template"
    );
    assert_eq!(
        err("x\n{{ range .Values.few }}{{ range $.Values.few }}{{ end }}{{ end }}"),
        "line 2: `range` iterations exceed the limit of 100000 per template"
    );
    // Up to the limit is fine: 315 + 315² = 99,540 iterations.
    let src = "{{ range .Values.few }}{{ range $.Values.few }}{{ end }}{{ end }}";
    let few = serde_json::json!({"Values": {"few": (0..315).collect::<Vec<u32>>()}});
    assert_eq!(render_data(src, &few, &none).unwrap(), "");
    assert_eq!(
        err("{{ range .Values.big }}{{ $.Values.long }}{{ end }}"),
        "line 1: rendered output exceeds the limit of 4194304 bytes (4 MiB)"
    );
    // A list doubling at every iteration, and one nesting deeper at every iteration.
    assert_eq!(
        err("{{ $x := list 1 }}{{ range .Values.few }}{{ $x = list $x $x }}{{ end }}"),
        "line 1: values computed while rendering exceed the limit of 16777216 bytes (16 MiB)"
    );
    assert_eq!(
        err("{{ $x := list }}{{ range .Values.few }}{{ $x = list $x }}{{ end }}"),
        "line 1: values nest deeper than the limit of 128 levels"
    );
    let src = format!("{{{{ 1{} }}}}", " | list".repeat(200));
    assert_eq!(
        err(&src),
        "line 1: values nest deeper than the limit of 128 levels"
    );
    assert_eq!(
        err("{{ splitList \"\" .Values.huge }}"),
        "line 1: `splitList` would produce more than the evaluation limit"
    );
    assert_eq!(
        err("{{ join .Values.huge (splitList \"\" .Values.long) }}"),
        "line 1: `join` would produce more than the evaluation limit"
    );
    // Every block kind counts towards the nesting limit.
    for open in [
        "{{ with .Values }}",
        "{{ range .Values.few }}",
        "{{ if true }}{{ with 1 }}",
    ] {
        let src = open.repeat(MAX_DEPTH + 1) + &"{{ end }}".repeat(2 * MAX_DEPTH + 2);
        assert!(
            check(&src)
                .unwrap_err()
                .message
                .contains("blocks nest deeper than the limit of 64 levels"),
            "{open}"
        );
    }
    // Data nesting deeper than the limit.
    let mut deep = serde_json::json!(1);
    for _ in 0..MAX_VALUE_DEPTH + 1 {
        deep = serde_json::json!([deep]);
    }
    assert_eq!(
        render_data("x", &deep, &none).unwrap_err().to_string(),
        "line 1: the data nests deeper than the limit of 128 levels"
    );
}
