//! The web dashboard in a real browser: `slate serve` with an
//! administrator token and machines that assigned and reported through the
//! HTTP API (up to date, fell back, failed, pending), and headless
//! Chromium (Debian's package) driven over the DevTools protocol.
//!
//! Chromium is driven through `--remote-debugging-pipe` (JSON messages
//! separated by NUL bytes on its file descriptors 3 and 4), which needs no
//! WebSocket client: a shell puts our pipes on those descriptors. The test
//! logs in through the real form (typing the token and pressing Enter),
//! follows the session cookie, reads each page's DOM and saves a
//! screenshot per page under `CARGO_TARGET_TMPDIR/dashboard/`.
//!
//! Chromium runs with `--no-sandbox`: its sandbox refuses to run as root
//! (tests run as root here and in CI). The pages it loads are this test's
//! own server on 127.0.0.1, whose content the test wrote, so the sandbox
//! has nothing to contain.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{s, scratch, skip, slate_ok, Server};

/// How long one browser step may take on a loaded machine.
const STEP: Duration = Duration::from_secs(30);

/// A headless Chromium, closed and killed on drop; its profile is in a
/// temporary directory.
struct Browser {
    child: Child,
    input: ChildStdin,
    messages: mpsc::Receiver<Value>,
    /// Events received while waiting for an answer.
    events: Vec<Value>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Politely first, so its helper processes go with it; then surely.
        let _ = self.send("Browser.close", json!({}), false);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Browser {
    fn start(bin: &Path) -> Browser {
        let profile = scratch();
        let script = format!(
            "exec '{}' --headless=new --no-sandbox --disable-gpu --window-size=1280,800 \
             --remote-debugging-pipe --user-data-dir='{}' --no-first-run --no-default-browser-check \
             --disable-extensions --disable-background-networking --disable-sync --disable-dev-shm-usage \
             about:blank 3<&0 4>&1 0</dev/null 1>/dev/null",
            s(bin),
            s(profile.path())
        );
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start chromium");
        let input = child.stdin.take().unwrap();
        let mut output = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = match output.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = buf.drain(..=end).collect();
                    if let Ok(v) = serde_json::from_slice::<Value>(&msg[..msg.len() - 1]) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            input,
            messages: rx,
            events: Vec::new(),
            next: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = b.browser_call("Target.attachToTarget", json!({"targetId": target, "flatten": true}));
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call("Page.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    fn send(&mut self, method: &str, params: Value, in_page: bool) -> std::io::Result<u64> {
        self.next += 1;
        let mut msg = json!({"id": self.next, "method": method, "params": params});
        if in_page {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.input.write_all(&bytes)?;
        self.input.flush()?;
        Ok(self.next)
    }

    fn answer(&mut self, id: u64, method: &str) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if msg["id"].as_u64() == Some(id) {
                if let Some(e) = msg.get("error") {
                    panic!("chromium: {method}: {e}");
                }
                return msg["result"].clone();
            }
            self.events.push(msg);
        }
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, false).expect("write to chromium");
        self.answer(id, method)
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params, true).expect("write to chromium");
        self.answer(id, method)
    }

    /// Wait for the page to finish loading (an event seen already counts).
    fn wait_load(&mut self) {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["method"] == "Page.loadEventFired") {
                self.events.drain(..=i);
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = self
                .messages
                .recv_timeout(left)
                .expect("the page did not finish loading");
            self.events.push(msg);
        }
    }

    fn goto(&mut self, url: &str) {
        self.events.clear();
        self.call("Page.navigate", json!({"url": url}));
        self.wait_load();
    }

    fn root(&mut self) -> i64 {
        self.call("DOM.getDocument", json!({"depth": 0}))["root"]["nodeId"]
            .as_i64()
            .unwrap()
    }

    /// The page's HTML as the browser has it.
    fn dom(&mut self) -> String {
        let root = self.root();
        self.call("DOM.getOuterHTML", json!({"nodeId": root}))["outerHTML"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The page's URL.
    fn url(&mut self) -> String {
        let h = self.call("Page.getNavigationHistory", json!({}));
        let i = h["currentIndex"].as_u64().unwrap() as usize;
        h["entries"][i]["url"].as_str().unwrap().to_string()
    }

    /// Focus the element `selector` selects, as a keyboard user would.
    fn focus(&mut self, selector: &str) {
        let root = self.root();
        let node = self.call("DOM.querySelector", json!({"nodeId": root, "selector": selector}))["nodeId"].clone();
        assert_ne!(node, json!(0), "no {selector} on the page");
        self.call("DOM.focus", json!({"nodeId": node}));
    }

    fn key(&mut self, key: &str, code: &str, vk: u32, text: &str) {
        for kind in ["keyDown", "keyUp"] {
            let mut p = json!({"type": kind, "key": key, "code": code, "windowsVirtualKeyCode": vk});
            if kind == "keyDown" && !text.is_empty() {
                p["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", p);
        }
    }

    /// Save a PNG of the viewport to `path`.
    fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64(shot["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
        println!("screenshot: {}", path.display());
    }
}

/// Standard base64 (what the DevTools protocol sends screenshots in).
fn base64(text: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(val(c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// The machines of the fleet: id, hostname, and what its report says.
struct Machine {
    id: &'static str,
    hostname: &'static str,
    /// Runs the head (else the previous snapshot).
    current_head: bool,
    update: &'static str,
    message: &'static str,
    boot: &'static str,
}

const MACHINES: &[Machine] = &[
    Machine {
        id: "lab-01",
        hostname: "lab-01",
        current_head: true,
        update: "up-to-date",
        message: "nothing to do",
        boot: "good",
    },
    Machine {
        id: "lab-02",
        hostname: "lab-02",
        current_head: true,
        update: "ok",
        message: "updated",
        boot: "good",
    },
    Machine {
        id: "lab-03",
        hostname: "lab-03",
        current_head: false,
        update: "ok",
        message: "the new snapshot did not boot",
        boot: "fell-back",
    },
    Machine {
        id: "kiosk-1",
        hostname: "kiosk-1",
        current_head: false,
        update: "error",
        message: "cannot reach the server: <connection refused>",
        boot: "good",
    },
    Machine {
        id: "kiosk-2",
        hostname: "kiosk-2",
        current_head: false,
        update: "next-boot",
        message: "the target runs at the next boot",
        boot: "good",
    },
];

#[test]
fn the_dashboard_in_a_browser() {
    let Some(bin) = chromium() else {
        skip("the_dashboard_in_a_browser: needs chromium (scripts/setup.sh installs it)");
        return;
    };
    let dir = scratch();
    let repo = dir.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut ids = Vec::new();
    for (n, msg) in ["first image", "second image"].iter().enumerate() {
        std::fs::write(tree.join("version"), format!("{n}\n")).unwrap();
        let out = slate_ok(&[
            "commit",
            "--repo",
            s(&repo),
            "--channel",
            "lab/main",
            "-m",
            msg,
            s(&tree),
        ]);
        ids.push(out.lines().next().unwrap().trim().to_string());
    }
    let (old, head) = (ids[0].clone(), ids[1].clone());
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet,
        "[[machine]]\nname = \"kiosks\"\nhostname = \"kiosk-*\"\nchannel = \"lab/main\"\n\n[default]\nchannel = \"lab/main\"\n\n\
         [rollout.\"lab/main\"]\ncanary = { hostname = \"lab-0*\" }\n\
         waves = [{ percent = 50, after = \"1h\" }, { percent = 100, after = \"1h\" }]\n",
    )
    .unwrap();
    let admin_file = dir.path().join("admin.token");
    slate_ok(&["fleet", "admin-token", s(&admin_file)]);
    let admin = std::fs::read_to_string(&admin_file).unwrap().trim().to_string();
    let server = Server::start(&[
        "--repo",
        s(&repo),
        "--fleet",
        s(&fleet),
        "--admin-token-file",
        s(&admin_file),
    ]);
    let url = server.url.clone();

    // The machines talk to the server as agents do.
    let http = reqwest::blocking::Client::builder().timeout(STEP).build().unwrap();
    let mut tokens = std::collections::HashMap::new();
    for m in MACHINES {
        let token = slate_ok(&["fleet", "enroll", m.id, "--repo", s(&repo)])
            .trim()
            .to_string();
        tokens.insert(m.id, token.clone());
        let identity = json!({"id": m.id, "hostname": m.hostname, "labels": {"room": "b12"}});
        let r = http
            .post(format!("{url}/v1/fleet/assignment"))
            .bearer_auth(&token)
            .json(&json!({"machine": identity}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
        let current = if m.current_head { &head } else { &old };
        let target = if m.update == "error" { current } else { &head };
        let r = http
            .post(format!("{url}/v1/fleet/report"))
            .bearer_auth(&token)
            .json(&json!({
                "machine": identity,
                "current": current,
                "target": target,
                "active_slot": "a",
                "slots": {"a": current, "b": head},
                "last_update": {"result": m.update, "message": m.message},
                "boot": {"result": m.boot, "slot": "a", "snapshot": current},
            }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().unwrap());
    }

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&out).unwrap();
    let mut b = Browser::start(&bin);

    // Not logged in: every page leads to the login form.
    b.goto(&format!("{url}/ui/machine/lab-03"));
    assert!(b.url().ends_with("/ui/login"), "{}", b.url());
    let dom = b.dom();
    assert!(dom.contains("Administrator token"), "{dom}");
    b.screenshot(&out.join("login.png"));

    // A wrong token is refused.
    b.focus("#token");
    b.call("Input.insertText", json!({"text": "slate1-not-a-token"}));
    b.events.clear();
    b.key("Enter", "Enter", 13, "\r");
    b.wait_load();
    assert!(b.dom().contains("not an administrator token"), "{}", b.dom());

    // Log in with the keyboard: type the token, press Enter.
    b.focus("#token");
    b.call("Input.insertText", json!({"text": admin}));
    b.events.clear();
    b.key("Enter", "Enter", 13, "\r");
    b.wait_load();
    assert!(b.url().ends_with("/ui/"), "{}", b.url());
    let cookies = b.call("Network.getCookies", json!({"urls": [format!("{url}/ui/")]}));
    let cookie = cookies["cookies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "slate_ui")
        .expect("the session cookie")
        .clone();
    assert_eq!(cookie["httpOnly"], true);
    assert_eq!(cookie["sameSite"], "Strict");
    assert_eq!(cookie["path"], "/ui");
    assert!(!cookie["value"].as_str().unwrap().contains(&admin[7..]));

    let dom = b.dom();
    for (id, state) in [
        ("lab-01", "up-to-date"),
        ("lab-02", "up-to-date"),
        ("lab-03", "fell-back"),
        ("kiosk-1", "failed"),
        ("kiosk-2", "pending"),
    ] {
        assert!(
            dom.contains(&format!("data-machine=\"{id}\" data-state=\"{state}\"")),
            "{id} should be {state}: {dom}"
        );
    }
    assert!(dom.contains("5 machines"), "{dom}");
    assert!(
        dom.contains(">kiosks<") && dom.contains(">default<"),
        "groups shown: {dom}"
    );
    b.screenshot(&out.join("machines.png"));

    // Filters: by state, and by group and state together.
    b.goto(&format!("{url}/ui/?state=fell-back"));
    let dom = b.dom();
    assert!(dom.contains("data-machine=\"lab-03\""), "{dom}");
    assert!(!dom.contains("data-machine=\"lab-01\""), "{dom}");
    assert!(dom.contains("1 machine "), "{dom}");
    b.screenshot(&out.join("machines-fell-back.png"));
    b.goto(&format!("{url}/ui/?group=kiosks&state=failed"));
    let dom = b.dom();
    assert!(
        dom.contains("data-machine=\"kiosk-1\"") && !dom.contains("data-machine=\"kiosk-2\""),
        "{dom}"
    );

    // One machine, its reports and messages (escaped).
    b.goto(&format!("{url}/ui/machine/kiosk-1"));
    let dom = b.dom();
    assert!(
        dom.contains("cannot reach the server: &lt;connection refused&gt;"),
        "{dom}"
    );
    assert!(dom.contains("Recent reports") && dom.contains("r-error"), "{dom}");
    b.screenshot(&out.join("machine.png"));

    // Channels, their history and machine counts.
    b.goto(&format!("{url}/ui/channels"));
    let dom = b.dom();
    assert!(dom.contains("second image") && dom.contains("first image"), "{dom}");
    assert!(dom.contains(&head[..12]), "{dom}");
    assert!(dom.contains("<a href=\"/ui/?channel=lab%2Fmain\">5</a>"), "{dom}");
    b.screenshot(&out.join("channels.png"));

    // The head the server first saw was everyone's; a new commit is
    // rolled out to the canaries (lab-0*) first. Two of the three fall
    // back to their old slot: the rollout halts by itself, and the
    // dashboard says so.
    std::fs::write(tree.join("version"), "2\n").unwrap();
    let committed = slate_ok(&[
        "commit",
        "--repo",
        s(&repo),
        "--channel",
        "lab/main",
        "-m",
        "third image",
        s(&tree),
    ]);
    let third = committed.lines().next().unwrap().trim().to_string();
    b.goto(&format!("{url}/ui/rollouts"));
    let dom = b.dom();
    assert!(dom.contains("data-rollout-state=\"running\""), "{dom}");
    for (id, assigned, current, boot) in [
        ("lab-01", &third, &third, "good"),
        ("lab-02", &third, &head, "fell-back"),
        ("lab-03", &third, &head, "fell-back"),
        ("kiosk-2", &head, &head, "good"),
    ] {
        let identity = json!({"id": id, "hostname": id, "labels": {"room": "b12"}});
        let r = http
            .post(format!("{url}/v1/fleet/assignment"))
            .bearer_auth(&tokens[id])
            .json(&json!({"machine": identity}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let a: Value = r.json().unwrap();
        assert_eq!(a["snapshot"].as_str(), Some(assigned.as_str()), "{id}: {a}");
        let r = http
            .post(format!("{url}/v1/fleet/report"))
            .bearer_auth(&tokens[id])
            .json(&json!({
                "machine": identity,
                "current": current,
                "target": assigned,
                "active_slot": "a",
                "slots": {"a": current, "b": assigned},
                "last_update": {"result": "ok", "message": "updated"},
                "boot": {"result": boot, "slot": "a", "snapshot": current},
            }))
            .send()
            .unwrap();
        assert_eq!(r.status(), 204, "{}", r.text().unwrap());
    }
    b.goto(&format!("{url}/ui/rollouts"));
    let dom = b.dom();
    assert!(dom.contains("data-rollout-state=\"halted\""), "{dom}");
    assert!(
        dom.contains("2 of 3 canary machines fell back to their old slot"),
        "the reason: {dom}"
    );
    assert!(dom.contains(&third[..12]) && dom.contains(&head[..12]), "{dom}");
    assert!(
        dom.contains("data-wave=\"0\" data-released=\"true\"")
            && dom.contains("data-wave=\"1\" data-released=\"false\""),
        "{dom}"
    );
    assert!(
        dom.contains("<a href=\"/ui/?channel=lab%2Fmain&amp;state=fell-back\">2</a>"),
        "the canaries' fall-backs, linked: {dom}"
    );
    b.screenshot(&out.join("rollouts.png"));
    b.goto(&format!("{url}/ui/?channel=lab%2Fmain&state=fell-back"));
    let dom = b.dom();
    for id in ["lab-02", "lab-03"] {
        assert!(
            dom.contains(&format!("data-machine=\"{id}\" data-state=\"fell-back\"")),
            "{id}: {dom}"
        );
    }
    assert!(!dom.contains("data-machine=\"lab-01\""), "{dom}");
    b.screenshot(&out.join("rollout-fell-back.png"));

    // Log out with the keyboard; the pages are closed again.
    b.focus(".logout button");
    b.events.clear();
    b.key("Enter", "Enter", 13, "\r");
    b.wait_load();
    assert!(b.url().ends_with("/ui/login"), "{}", b.url());
    b.goto(&format!("{url}/ui/"));
    assert!(b.url().ends_with("/ui/login"), "{}", b.url());
    drop(b);
    drop(server);
}
