//! Headless Chromium for the console's browser tests: Debian's `chromium` and `chromedriver`
//! (scripts/services installs both), one chromedriver per [`Browser`] on a free port in its own
//! process group (ended with it), driven over WebDriver by `fantoccini`. Screenshots go to
//! `target/console-screenshots/` (or `USAGE_AGG_SCREENSHOTS`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Desktop and phone viewports the tests and screenshots use.
pub const DESKTOP: (u32, u32) = (1280, 800);
pub const PHONE: (u32, u32) = (390, 844);

pub struct Browser {
    driver: Child,
    pub client: Client,
    _profile: tempfile::TempDir,
    pub downloads: tempfile::TempDir,
}

/// Where screenshots are written (created).
pub fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("USAGE_AGG_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../console-screenshots")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session at the desktop size.
    pub async fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: `scripts/services up` installs Debian's chromium and chromium-driver"
            );
        }
        let port = super::common::free_port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd.spawn().expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let downloads = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-quic", "--no-first-run",
                    "--disable-default-apps", "--disable-extensions", "--hide-scrollbars",
                    "--force-device-scale-factor=1", "--lang=en-US",
                    format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
                "prefs": {
                    "download.default_directory": downloads.path().display().to_string(),
                    "download.prompt_for_download": false,
                },
            }),
        );
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = ClientBuilder::native()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("webdriver session with chromium");
        let b = Browser {
            driver,
            client,
            _profile: profile,
            downloads,
        };
        b.size(DESKTOP).await;
        b
    }

    /// Sets the viewport (inner) size: the window is resized until the page sees it.
    pub async fn size(&self, (w, h): (u32, u32)) {
        self.client.set_window_size(w, h).await.unwrap();
        let inner = self
            .client
            .execute("return [window.innerWidth, window.innerHeight]", vec![])
            .await
            .unwrap();
        let (iw, ih) = (
            inner[0].as_u64().unwrap_or(0),
            inner[1].as_u64().unwrap_or(0),
        );
        if (iw, ih) != (u64::from(w), u64::from(h)) {
            let (dw, dh) = (
                u64::from(w) - iw.min(u64::from(w)),
                u64::from(h) - ih.min(u64::from(h)),
            );
            self.client
                .set_window_size(w + dw as u32, h + dh as u32)
                .await
                .unwrap();
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Runs `script` (a function body; `arguments` holds args) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `condition` (a JS expression) is truthy; panics with `what` after `timeout`.
    pub async fn wait(&self, what: &str, condition: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let script = format!("return ({condition});");
        loop {
            if let Ok(v) = self.client.execute(&script, vec![]).await
                && !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0))
            {
                return v;
            }
            if Instant::now() > deadline {
                let body = self
                    .client
                    .execute(
                        "return document.body ? document.body.innerText.slice(0, 2000) : ''",
                        vec![],
                    )
                    .await
                    .unwrap_or_default();
                panic!("timed out waiting for {what} ({condition}); page text:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs in to the console once its form shows: `key` (an account key or the operator
    /// token), and with the operator token the account to look at, if given.
    pub async fn sign_in(&self, key: &str, account: Option<&str>) {
        self.wait(
            "the sign-in form",
            "!document.getElementById('sign-in').hidden",
            Duration::from_secs(30),
        )
        .await;
        self.type_into("#key-input", key).await;
        if let Some(a) = account {
            self.type_into("#sign-in-account", a).await;
        }
        self.click("#sign-in-form button[type=submit]").await;
    }

    /// Waits for the console to have shown `page` (`data-ready` on the body) after `after`.
    pub async fn ready(&self, page: &str, after: u64) -> u64 {
        let v = self
            .wait(
                &format!("page {page}"),
                &format!(
                    "(() => {{ const r = (document.body.dataset.ready || '').split(' '); return r[0] === '{page}' && Number(r[1]) > {after} ? Number(r[1]) : 0; }})()"
                ),
                Duration::from_secs(30),
            )
            .await;
        v.as_u64().unwrap()
    }

    /// Goes to `url` (a console page) and waits until the console has shown `page` there,
    /// whether the browser reloads or only follows the fragment.
    pub async fn open(&self, url: &str, page: &str) -> u64 {
        let _ = self
            .client
            .execute(
                "if (document.body) document.body.dataset.ready = ''",
                vec![],
            )
            .await;
        self.goto(url).await;
        self.ready(page, 0).await
    }

    /// The render counter the console last set (0 before any page).
    pub async fn renders(&self) -> u64 {
        self.js(
            "return Number((document.body.dataset.ready || 'x 0').split(' ')[1])",
            vec![],
        )
        .await
        .as_u64()
        .unwrap_or(0)
    }

    /// innerText of every element matching `css`.
    pub async fn texts(&self, css: &str) -> Vec<String> {
        let v = self
            .js(
                "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText.trim())",
                vec![json!(css)],
            )
            .await;
        serde_json::from_value(v).unwrap()
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Clears the field and types `text` into it (real key events).
    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    /// Saves a screenshot of the whole page at viewport `size` as `name-WxH.png`: the window
    /// grows to the page's height (at most 4000 px) for the shot and goes back after.
    pub async fn shot(&self, name: &str, size: (u32, u32)) -> PathBuf {
        self.size(size).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let h = self
            .js(
                "return Math.ceil(document.documentElement.scrollHeight)",
                vec![],
            )
            .await
            .as_u64()
            .unwrap_or(u64::from(size.1))
            .clamp(u64::from(size.1), 4000) as u32;
        self.size((size.0, h)).await;
        self.js("window.scrollTo(0, 0)", vec![]).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let png = self.client.screenshot().await.unwrap();
        self.size(size).await;
        let path = screenshot_dir().join(format!("{name}-{}x{}.png", size.0, size.1));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Browser console messages of level SEVERE (script errors, refused loads, CSP
    /// violations) since the last call (chromedriver's log endpoint).
    pub async fn severe_logs(&self) -> Vec<String> {
        let v = self
            .client
            .issue_cmd(Raw::post("se/log", json!({"type": "browser"})))
            .await
            .unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// A Chrome DevTools Protocol command (`Performance.getMetrics`, ...) through chromedriver.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.client
            .issue_cmd(Raw::post(
                "goog/cdp/execute",
                json!({"cmd": cmd, "params": params}),
            ))
            .await
            .unwrap_or_else(|e| panic!("cdp {cmd}: {e}"))
    }

    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// A WebDriver command fantoccini has no method for: POST /session/{id}/PATH with a body.
#[derive(Debug)]
struct Raw {
    path: &'static str,
    body: Value,
}

impl Raw {
    fn post(path: &'static str, body: Value) -> Raw {
        Raw { path, body }
    }
}

impl fantoccini::wd::WebDriverCompatibleCommand for Raw {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (axum::http::Method::POST, Some(self.body.to_string()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole process group: chromedriver and the browser it started.
        let pgid = self.driver.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.wait();
    }
}
