//! Seeded randomized churn against ground truth. Several processes open, leak, close, shut
//! down, reset, get refused and exit at random; the test keeps an exact model of what each
//! process holds and checks tracer (and `ss`, for what ss can see) at checkpoints while leaked
//! sockets are still held, and at the end. The seed is printed; reproduce one run with
//! `TRACER_CHURN_SEED=N cargo xtask test -- churn`.
mod common;

use common::{Daemon, Rng, Workload, num, ss_count};

/// What the test knows one client holds, oldest first (the workload closes oldest first).
#[derive(Default)]
struct Held {
    open: u64,
    opened: u64,
    closed: u64,
    refused: u64,
}

fn run_seed(seed: u64) {
    eprintln!("churn seed {seed} (reproduce: TRACER_CHURN_SEED={seed})");
    let daemon = Daemon::start(&[]);
    let mut rng = Rng::raw(seed);
    let mut server = Workload::spawn();
    let port = server.listen("127.0.0.1");
    server.cmd("serve-bg 0 hold");
    let addr = format!("127.0.0.1:{port}");
    let refused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut clients: Vec<(Workload, Held)> =
        (0..3).map(|_| (Workload::spawn(), Held::default())).collect();
    // The server holds every connection it accepted (it never closes): its count only grows.
    let mut server_open = 0u64;
    let mut reset_at_server = 0u64;
    let mut exited: Vec<(u32, Held)> = Vec::new();

    for step in 1..=48 {
        let which = rng.below(clients.len() as u64) as usize;
        let (client, held) = &mut clients[which];
        match rng.below(10) {
            0..=3 => {
                let n = 1 + rng.below(5);
                client.connect(&addr, n as usize);
                held.open += n;
                held.opened += n;
                server_open += n;
            }
            4 | 5 if held.open > 0 => {
                let n = 1 + rng.below(held.open);
                client.cmd(&format!("close {n}"));
                held.open -= n;
                held.closed += n;
            }
            6 if held.open > 0 => {
                // Half-close: stays open on both sides.
                client.cmd(&format!("shutdown-wr {}", 1 + rng.below(held.open)));
            }
            7 if held.open > 0 => {
                // Abortive close: the client releases, the server's copy is reset but held.
                let n = 1 + rng.below(held.open);
                client.cmd(&format!("reset {n}"));
                held.open -= n;
                held.closed += n;
                reset_at_server += n;
            }
            8 => {
                let n = 1 + rng.below(3);
                client.cmd(&format!("connect-refused 127.0.0.1:{refused_port} {n}"));
                held.refused += n;
            }
            9 if clients.len() > 1 && step % 3 == 0 => {
                // A process exits holding whatever it holds: all of it is released.
                let (client, held) = clients.remove(which);
                let pid = client.pid;
                client.exit();
                exited.push((pid, Held { open: 0, closed: held.closed + held.open, ..held }));
                clients.push((Workload::spawn(), Held::default()));
            }
            _ => {}
        }
        if step % 12 == 0 {
            checkpoint(
                &daemon,
                seed,
                step,
                &clients,
                &exited,
                server.pid,
                server_open,
                reset_at_server,
            );
        }
    }
    let status = daemon.json(&["status"]);
    assert_eq!(num(&status, "events_lost"), 0, "seed {seed}: {status}");
    assert_eq!(num(&status, "unmatched_releases"), 0, "seed {seed}: {status}");
    // Two reconciles over the final state (a correction needs two scans to agree): they must
    // find nothing to correct.
    daemon.wait_for_more("reconciles", 2);
    checkpoint(&daemon, seed, 0, &clients, &exited, server.pid, server_open, reset_at_server);
    eprintln!("seed {seed}:");
    common::assert_corrections_explained(&daemon);
}

#[allow(clippy::too_many_arguments)]
fn checkpoint(
    daemon: &Daemon,
    seed: u64,
    step: u32,
    clients: &[(Workload, Held)],
    exited: &[(u32, Held)],
    server: u32,
    server_open: u64,
    reset_at_server: u64,
) {
    let at = format!("seed {seed}, step {step}");
    daemon.eventually(&format!("ground truth at {at}"), |d| {
        for (pid, held) in
            clients.iter().map(|(w, h)| (w.pid, h)).chain(exited.iter().map(|(p, h)| (*p, h)))
        {
            let p = d.process(pid);
            for (field, want) in [
                ("open", held.open),
                ("opened_total", held.opened),
                ("closed_total", held.closed),
                ("connect_failed", held.refused),
            ] {
                let got = p[field].as_u64().unwrap_or(0);
                if got != want {
                    return Err(format!("pid {pid} {field}: tracer {got}, truth {want}"));
                }
            }
        }
        let s = d.process(server);
        let (open, close) =
            (s["open"].as_u64().unwrap_or(0), s["states"]["close"].as_u64().unwrap_or(0));
        if open != server_open || close != reset_at_server {
            return Err(format!(
                "server open {open} (truth {server_open}), close {close} (truth {reset_at_server})"
            ));
        }
        Ok(())
    });
    // ss agrees with both sides wherever it can see: everything but reset-but-held sockets.
    for (w, held) in clients {
        assert_eq!(ss_count(w.pid), held.open, "{at}: ss for client {}", w.pid);
    }
    assert_eq!(ss_count(server), server_open - reset_at_server, "{at}: ss for the server");
}

#[test]
fn seeded_random_churn_matches_ground_truth() {
    let seeds: Vec<u64> = match std::env::var("TRACER_CHURN_SEED") {
        Ok(seed) => vec![seed.parse().expect("TRACER_CHURN_SEED is a number")],
        Err(_) => vec![7, 1337, 20261124],
    };
    for seed in seeds {
        run_seed(seed);
    }
}
