//! The web console (`/ui/`). Over plain HTTPS: pages need a session, the login sets an
//! `HttpOnly; Secure; SameSite=Strict` cookie, answers carry the CSP, what the pages show
//! is escaped, and a step's log streams as server-sent events. In a real browser (headless
//! Chromium through chromedriver, selected by `BERTH_BROWSER=1`): an operator signs in,
//! watches a cluster's grid and a step's log change without reloading, and screenshots
//! of every page are kept; a stranger is sent to the login page and the session cookie is
//! out of scripts' reach.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// An HTTPS client trusting the controller's CA that does not follow redirects (the
/// harness's follows them, and the redirects are what is checked here).
fn http(ctl: &Controller) -> reqwest::blocking::Client {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ctl.ca_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::blocking::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn header(r: &reqwest::blocking::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Starts a cluster `c` of one host `m0` whose install hook prints a line, and waits for
/// it to be Running.
fn one_host_cluster(ctl: &Controller) -> Vec<Proc> {
    let agents = ctl.agents(&["m0"]);
    let src = ctl.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let b = hook_bundle(
        &src,
        "tiny",
        &[("install", "echo installed on $BERTH_HOST")],
        "",
    );
    push_dir(ctl, &b, "tiny:v1");
    let out = apply_file(ctl, &ctl.clusterfile("c", &["m0"], &[], &["tiny:v1"], &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    agents
}

#[test]
fn console_needs_a_session_escapes_what_it_shows_and_streams_logs() {
    let ctl = Controller::start(&[]);
    let web = http(&ctl);
    let get = |path: &str, cookie: Option<&str>| {
        let mut r = web.get(format!("{}{path}", ctl.url()));
        if let Some(c) = cookie {
            r = r.header("Cookie", format!("berth_token={c}"));
        }
        r.send().unwrap()
    };

    // Without a session every page (and the log stream, and any other /ui/ path) is a
    // redirect to the login page, with the security headers.
    for path in [
        "/ui/",
        "/ui/hosts",
        "/ui/bundles",
        "/ui/events",
        "/ui/clusters/c",
        "/ui/clusters/c/grid",
        "/ui/clusters/c/steps/1/log",
        "/ui/no/such/page",
    ] {
        let r = get(path, None);
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(header(&r, "location"), "/ui/login", "{path}");
        assert!(header(&r, "content-security-policy").starts_with("default-src 'self'"));
    }
    let r = get("/ui/", Some("berth_admin_not-a-token"));
    assert_eq!(r.status(), 303);
    assert!(
        header(&r, "set-cookie").contains("Max-Age=0"),
        "a stale cookie is cleared"
    );
    assert_eq!(header(&get("/ui", None), "location"), "/ui/");

    // The login page and the two static files need none, and load nothing from elsewhere.
    let r = get("/ui/login", None);
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "content-security-policy"),
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    );
    assert_eq!(header(&r, "x-frame-options"), "DENY");
    assert_eq!(header(&r, "referrer-policy"), "same-origin");
    assert_eq!(header(&r, "cache-control"), "no-store");
    let page = r.text().unwrap();
    assert!(
        page.contains(r#"<form method="post" action="/ui/login">"#),
        "{page}"
    );
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "{page}"
    );
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    for (path, ty) in [
        ("/ui/static/console.css", "text/css; charset=utf-8"),
        ("/ui/static/console.js", "text/javascript; charset=utf-8"),
    ] {
        let r = get(path, None);
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), ty);
    }

    // A wrong token is refused; the admin token signs in with the cookie's attributes.
    let login = |token: &str| {
        web.post(format!("{}/ui/login", ctl.url()))
            .form(&[("token", token)])
            .send()
            .unwrap()
    };
    let r = login("berth_admin_wrong");
    assert_eq!(r.status(), 401);
    assert!(header(&r, "set-cookie").is_empty());
    assert!(r.text().unwrap().contains("unknown or revoked"));
    let admin = ctl.admin_token();
    let r = login(&format!("  {admin}\n"));
    assert_eq!(r.status(), 303);
    assert_eq!(header(&r, "location"), "/ui/");
    assert_eq!(
        header(&r, "set-cookie"),
        format!("berth_token={admin}; HttpOnly; SameSite=Strict; Secure; Path=/ui; Max-Age=28800")
    );
    // Another site cannot sign a browser in (with a token of its choosing) or out.
    for path in ["/ui/login", "/ui/logout"] {
        let r = web
            .post(format!("{}{path}", ctl.url()))
            .header("origin", "https://evil.example")
            .form(&[("token", admin.as_str())])
            .send()
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        assert!(header(&r, "set-cookie").is_empty(), "{path}");
    }
    let r = web.post(format!("{}/ui/logout", ctl.url())).send().unwrap();
    assert_eq!(r.status(), 303);
    assert!(header(&r, "set-cookie").starts_with("berth_token=; "));
    assert!(header(&r, "set-cookie").contains("Max-Age=0"));

    // With the session: pages name the token and its role; an unknown cluster is a 404 page.
    let page = get("/ui/", Some(&admin)).text().unwrap();
    assert!(page.contains("No clusters yet"), "{page}");
    assert!(
        page.contains(r#"<span class="role">admin</span>"#),
        "{page}"
    );
    let r = get("/ui/clusters/nope", Some(&admin));
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("There is no cluster `nope`."));

    // A cluster, and an exec whose command (and so its event) holds markup.
    let _agents = one_host_cluster(&ctl);
    let out = ctl.cli(&["exec", "c", "--", "sh", "-c", "echo '<b>bold</b>'"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events = get("/ui/events?cluster=c", Some(&admin)).text().unwrap();
    assert!(events.contains("&lt;b&gt;bold&lt;/b&gt;"), "{events}");
    assert!(!events.contains("<b>bold"), "{events}");
    let grid = get("/ui/clusters/c/grid", Some(&admin)).text().unwrap();
    assert!(
        grid.contains(r#"data-host="m0" data-kind="install" data-state="succeeded""#),
        "{grid}"
    );
    assert!(!grid.contains("<html"), "a fragment: {grid}");
    let page = get("/ui/clusters/c", Some(&admin)).text().unwrap();
    assert!(
        page.contains(r#"data-refresh="/ui/clusters/c/grid""#),
        "{page}"
    );

    // The exec step's log: the whole text, then `end`; resumed at its end, only `end`.
    let status = ctl.status("c");
    let exec = step_of(&status, "m0", "exec")["id"].as_i64().unwrap();
    let path = format!("/ui/clusters/c/steps/{exec}/log");
    let r = get(&path, Some(&admin));
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    let sse = r.text().unwrap();
    assert!(sse.contains("event: log\ndata: \""), "{sse}");
    assert!(
        sse.contains("<b>bold</b>\\n\""),
        "the text as a JSON string: {sse}"
    );
    assert!(
        sse.contains("event: end\ndata: {\"state\":\"succeeded\""),
        "{sse}"
    );
    let last_id = sse
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .unwrap()
        .to_string();
    assert!(last_id.starts_with("1:"), "attempt:offset, {last_id}");
    let r = web
        .get(format!("{}{path}", ctl.url()))
        .header("Cookie", format!("berth_token={admin}"))
        .header("Last-Event-ID", &last_id)
        .send()
        .unwrap();
    let sse = r.text().unwrap();
    assert!(
        !sse.contains("event: log") && sse.contains("event: end"),
        "{sse}"
    );
    let r = get(
        &format!("/ui/clusters/c/steps/{}", exec + 1000),
        Some(&admin),
    );
    assert_eq!(r.status(), 404);
}

/// Where the browser tests keep their screenshots.
fn screenshot_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Headless Chromium driven through chromedriver (WebDriver over plain HTTP on loopback).
mod browser {
    use berth_tests::{free_port, Proc};
    use fantoccini::{Client, ClientBuilder, Locator};
    use std::future::Future;
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// chromedriver (and the Chromium it starts) in a process group of its own, killed on
    /// drop — also when the test fails.
    struct Driver {
        proc: Proc,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl Driver {
        fn start() -> Driver {
            use std::os::unix::process::CommandExt;
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let mut cmd = Command::new("chromedriver");
            cmd.arg(format!("--port={port}")).process_group(0);
            // Fails loudly when chromedriver is missing: the test was asked for.
            let mut proc = Proc::spawn(
                "chromedriver (apt-get install chromium chromium-driver)",
                cmd,
                dir.path().join("chromedriver.log"),
            );
            let start = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    proc.is_running(),
                    "chromedriver exited:\n{}",
                    proc.log_text()
                );
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "chromedriver did not listen within 30 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Driver {
                proc,
                port,
                _dir: dir,
            }
        }
    }

    impl Drop for Driver {
        fn drop(&mut self) {
            // The whole group: chromedriver and every browser process it started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.proc.pid())])
                .status();
        }
    }

    /// A browser session and the steps the tests take in it.
    pub struct Browser {
        pub c: Client,
    }

    /// Runs `test` with a fresh browser (no cookies) and ends the session whatever
    /// happens; a failure in `test` fails the caller with its own message.
    pub fn run<F, Fut>(test: F)
    where
        F: FnOnce(Browser) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let driver = Driver::start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut caps = serde_json::Map::new();
            caps.insert("acceptInsecureCerts".into(), true.into());
            caps.insert(
                "goog:chromeOptions".into(),
                serde_json::json!({
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1400,1000"],
                }),
            );
            let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{}", driver.port))
                .await
                .unwrap_or_else(|e| {
                    panic!("start a Chromium session: {e}\n{}", driver.proc.log_text())
                });
            let outcome = tokio::spawn(test(Browser { c: c.clone() })).await;
            let _ = c.close().await;
            if let Err(e) = outcome {
                match e.try_into_panic() {
                    Ok(p) => std::panic::resume_unwind(p),
                    Err(e) => panic!("the browser test did not finish: {e}"),
                }
            }
        });
    }

    impl Browser {
        pub async fn url(&self) -> String {
            self.c.current_url().await.unwrap().to_string()
        }

        /// The rendered text of the first element matching `css` ("" when there is none).
        pub async fn text(&self, css: &str) -> String {
            match self.c.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        }

        pub async fn attr(&self, css: &str, name: &str) -> String {
            let e = self.c.find(Locator::Css(css)).await.unwrap();
            e.attr(name).await.unwrap().unwrap_or_default()
        }

        /// Clicks what `css` finds — a link or a form's button — and waits for the page it
        /// leads to (a click returns before a navigation it starts has finished).
        pub async fn click(&self, css: &str) {
            self.c
                .execute("window.berthOldPage = true", vec![])
                .await
                .unwrap();
            let e = self.c.find(Locator::Css(css)).await.unwrap();
            e.click().await.unwrap();
            self.until(&format!("the page {css} leads to"), 30, || async move {
                let js = "return !window.berthOldPage && document.readyState === 'complete'";
                let loaded = self.c.execute(js, vec![]).await.ok()?;
                (loaded == true).then_some(())
            })
            .await;
        }

        /// The state of the grid cell of `host` × `kind`, if it is shown.
        pub async fn cell(&self, host: &str, kind: &str) -> Option<String> {
            let css = format!("td[data-host='{host}'][data-kind='{kind}']");
            let e = self.c.find(Locator::Css(&css)).await.ok()?;
            e.attr("data-state").await.ok().flatten()
        }

        /// Types `token` into the login form and submits it.
        pub async fn submit_token(&self, token: &str) {
            let input = self.c.find(Locator::Id("token")).await.unwrap();
            input.send_keys(token).await.unwrap();
            self.click("form[action='/ui/login'] button").await;
        }

        /// Signs in at `base`'s login page.
        pub async fn sign_in(&self, base: &str, token: &str) {
            self.c.goto(&format!("{base}/ui/login")).await.unwrap();
            self.submit_token(token).await;
            assert!(self.url().await.ends_with("/ui/"), "{}", self.url().await);
        }

        /// Saves a screenshot of the page as `dir/name.png` and prints where.
        pub async fn shot(&self, dir: &Path, name: &str) {
            let png = self.c.screenshot().await.unwrap();
            let path = dir.join(format!("{name}.png"));
            std::fs::write(&path, png).unwrap();
            println!("screenshot: {}", path.display());
        }

        /// Asks `f` every 200 ms until it answers, for at most `secs`; a timeout fails
        /// with the page's text.
        pub async fn until<T, F, Fut>(&self, what: &str, secs: u64, mut f: F) -> T
        where
            F: FnMut() -> Fut,
            Fut: Future<Output = Option<T>>,
        {
            let start = Instant::now();
            loop {
                if let Some(v) = f().await {
                    return v;
                }
                if start.elapsed() > Duration::from_secs(secs) {
                    let page = self.text("body").await;
                    panic!("timed out after {secs} s waiting for {what}; the page:\n{page}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[test]
#[cfg_attr(
    not(berth_browser),
    ignore = "needs chromium + chromedriver and BERTH_BROWSER=1"
)]
fn an_operator_follows_a_running_cluster_in_the_browser() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0", "n1"]);
    let src = ctl.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Installs take ~15 s and print a line a second: long enough to be seen running.
    let slow = "for i in $(seq 1 15); do echo \"$BERTH_HOST install line $i\"; sleep 1; done";
    let b = hook_bundle(
        &src,
        "slow",
        &[("install", slow), ("init", "echo init done")],
        "",
    );
    push_dir(&ctl, &b, "slow:v1");
    let cf = ctl.clusterfile("web", &["m0"], &["n1"], &["slow:v1"], &[]);
    browser::run(|b| async move {
        let b = &b;
        let shots = screenshot_dir();
        b.sign_in(&ctl.url(), &ctl.admin_token()).await;
        b.shot(&shots, "clusters-empty").await;
        let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        b.c.refresh().await.unwrap();
        let list = b.text("main table").await;
        assert!(
            list.contains("web") && list.contains("Reconciling"),
            "{list}"
        );
        b.shot(&shots, "clusters").await;
        b.click("a[href='/ui/clusters/web']").await;
        assert!(b.url().await.ends_with("/ui/clusters/web"));

        // The grid shows the install running, without this page being loaded again.
        b.c.execute("window.berthMark = 'this page'", vec![])
            .await
            .unwrap();
        b.until("m0's install running", 60, || async move {
            (b.cell("m0", "install").await.as_deref() == Some("running")).then_some(())
        })
        .await;
        b.shot(&shots, "grid-running").await;
        let log = b
            .attr("td[data-host='m0'][data-kind='install'] a.step", "href")
            .await;

        // Its log, in a window of its own, grows while the step runs and ends with it.
        let grid = b.c.window().await.unwrap();
        let w = b.c.new_window(false).await.unwrap();
        b.c.switch_to_window(w.handle).await.unwrap();
        b.c.goto(&format!("{}{log}", ctl.url())).await.unwrap();
        let first = b
            .until("log lines", 30, || async move {
                let t = b.text("#log").await;
                t.contains("m0 install line 2").then_some(t)
            })
            .await;
        assert_eq!(b.text("#step-state").await, "running");
        let seen = first.len();
        let later = b
            .until("more log lines", 30, || async move {
                let t = b.text("#log").await;
                (t.len() > seen && t.contains("m0 install line 5")).then_some(t)
            })
            .await;
        assert!(later.starts_with(&first), "{first:?} then {later:?}");
        assert_eq!(b.text("#step-state").await, "running");
        b.shot(&shots, "log-running").await;
        b.until("the log complete", 60, || async move {
            (b.text("#stream-status").await == "complete").then_some(())
        })
        .await;
        assert_eq!(b.text("#step-state").await, "succeeded");
        let all = b.text("#log").await;
        let lines: Vec<&str> = all.lines().filter(|l| l.contains("install line")).collect();
        let expected: Vec<String> = (1..=15).map(|i| format!("m0 install line {i}")).collect();
        assert_eq!(lines, expected, "each line once, in order");
        assert!(b.text("#step-detail").await.contains("exit 0"));
        b.shot(&shots, "log-finished").await;

        // Back on the grid: the same cell turned succeeded, still the same page.
        b.c.switch_to_window(grid).await.unwrap();
        b.until("m0's install succeeded", 60, || async move {
            (b.cell("m0", "install").await.as_deref() == Some("succeeded")).then_some(())
        })
        .await;
        let mark =
            b.c.execute("return window.berthMark", vec![])
                .await
                .unwrap();
        assert_eq!(mark, "this page", "the grid changed without a reload");
        b.until("the cluster Running", 90, || async move {
            (b.text(".summary .phase").await == "Running").then_some(())
        })
        .await;
        assert_eq!(
            b.cell("n1", "join-node").await.as_deref(),
            Some("succeeded")
        );
        let cell = b.text("td[data-host='m0'][data-kind='install']").await;
        assert!(
            cell.contains("succeeded") && cell.contains("attempt 1") && cell.contains("exit 0"),
            "{cell}"
        );
        b.shot(&shots, "grid-finished").await;

        // Hosts, bundles and events, reached through the navigation.
        b.click("header nav a[href='/ui/hosts']").await;
        let hosts = b.text("main table").await;
        assert!(hosts.contains("m0") && hosts.contains("n1"), "{hosts}");
        assert!(
            hosts.contains("Ready") && hosts.contains("x86_64"),
            "{hosts}"
        );
        b.shot(&shots, "hosts").await;
        b.click("header nav a[href='/ui/bundles']").await;
        let bundles = b.text("main table").await;
        assert!(
            bundles.contains("slow:v1") && bundles.contains("sha256:"),
            "{bundles}"
        );
        b.shot(&shots, "bundles").await;
        b.click("header nav a[href='/ui/events']").await;
        let events = b.text("main table").await;
        assert!(events.contains("install succeeded"), "{events}");
        b.shot(&shots, "events").await;
    });
}

#[test]
#[cfg_attr(
    not(berth_browser),
    ignore = "needs chromium + chromedriver and BERTH_BROWSER=1"
)]
fn a_stranger_is_sent_to_login_and_the_token_cookie_is_http_only() {
    let ctl = Controller::start(&[]);
    let out = ctl.cli(&[
        "api-token",
        "create",
        "--name",
        "ops-viewer",
        "--role",
        "viewer",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let viewer = stdout(&out).trim().to_string();
    browser::run(|b| async move {
        let b = &b;
        let shots = screenshot_dir();
        for page in ["/ui/", "/ui/hosts"] {
            b.c.goto(&format!("{}{page}", ctl.url())).await.unwrap();
            assert!(b.url().await.ends_with("/ui/login"), "{page}");
        }
        b.c.goto(&format!("{}/ui/login", ctl.url())).await.unwrap();
        b.shot(&shots, "login").await;
        b.submit_token("berth_viewer_not-a-real-token").await;
        assert!(b.url().await.ends_with("/ui/login"));
        assert_eq!(b.text("p.error").await, "This token is unknown or revoked.");
        b.shot(&shots, "login-refused").await;
        assert!(b.c.get_named_cookie("berth_token").await.is_err());

        b.submit_token(&viewer).await;
        assert!(b.url().await.ends_with("/ui/"));
        assert_eq!(b.text(".who .name").await, "ops-viewer");
        assert_eq!(b.text(".who .role").await, "viewer");
        let cookie = b.c.get_named_cookie("berth_token").await.unwrap();
        assert_eq!(cookie.value(), viewer);
        assert_eq!(cookie.http_only(), Some(true));
        assert_eq!(cookie.secure(), Some(true));
        assert_eq!(
            cookie.same_site().map(|s| s.to_string()).as_deref(),
            Some("Strict")
        );
        assert_eq!(cookie.path(), Some("/ui"));
        let seen = b.c.execute("return document.cookie", vec![]).await.unwrap();
        let seen = seen.as_str().unwrap();
        assert!(
            !seen.contains("berth_token") && !seen.contains(&viewer),
            "{seen}"
        );

        // A viewer reads every page; signing out ends the session.
        b.click("header nav a[href='/ui/hosts']").await;
        assert!(b.url().await.ends_with("/ui/hosts"));
        b.click(".who button").await;
        assert!(b.url().await.ends_with("/ui/login"));
        b.c.goto(&format!("{}/ui/events", ctl.url())).await.unwrap();
        assert!(b.url().await.ends_with("/ui/login"));
    });
}
