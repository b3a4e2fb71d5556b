//! Micro-benchmarks of the request and delivery hot paths that do no I/O:
//! parsing and validating a notification (every accepted item) and the
//! circuit breaker's decision (every vendor call).
//!
//! `cargo bench -p herald-core`; figures in docs/benchmarks.md.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use herald_core::breaker::{Admission, Breaker, BreakerSettings, Health};
use herald_core::model::NotificationRequest;
use herald_core::validate::{validate, Limits};

/// A typical 2FA request and a typical newsletter, as clients send them.
const OTP: &str = r#"{"idempotency_key":"otp-7f3a9c","priority":"critical","category":"2fa",
 "channels":["sms"],"recipient":{"id":"u-42","phone":"+14155550100"},
 "template":{"id":"otp","data":{"code":"493817"}},"ttl_seconds":300}"#;
const NEWSLETTER: &str = r#"{"priority":"low","category":"newsletter","channels":["email","push"],
 "recipient":{"id":"u-42","email":"zoë@example.com","push_tokens":[{"platform":"web","token":"web-u42"}]},
 "content":{"subject":"This week at Example — nouveautés 🎉","text":"Our favourite things this week.",
 "html":"<h1>This week</h1><p>Our favourite things this week.</p>"},"metadata":{"campaign":"2026-47"}}"#;

fn parse_and_validate(c: &mut Criterion) {
    let limits = Limits::default();
    let now = chrono::Utc::now();
    let mut g = c.benchmark_group("parse_validate");
    g.throughput(Throughput::Elements(1));
    for (name, body) in [("otp", OTP), ("newsletter", NEWSLETTER)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let req: NotificationRequest =
                    serde_json::from_slice(black_box(body.as_bytes())).expect("valid fixture");
                let errors = validate(&req, &limits, now);
                assert!(errors.is_empty());
                req
            })
        });
    }
    g.finish();
}

fn breaker_decision(c: &mut Criterion) {
    let settings = BreakerSettings {
        failure_threshold: 5,
        open_ms: 60_000,
        half_open_probes: 1,
    };
    let mut g = c.benchmark_group("breaker");
    g.throughput(Throughput::Elements(1));
    // The common case: closed, the call succeeds.
    g.bench_function("admit_and_report_closed", |b| {
        let mut breaker = Breaker::new(settings);
        let mut now = 0i64;
        b.iter(|| {
            now += 1;
            let (admission, _) = breaker.admit(black_box(now));
            if let Admission::Allowed(ticket) = admission {
                breaker.report(ticket, Health::Up, now);
            }
        })
    });
    // During an outage: open, the call is refused without I/O.
    g.bench_function("admit_open", |b| {
        let mut breaker = Breaker::new(settings);
        for t in 0..5 {
            if let (Admission::Allowed(ticket), _) = breaker.admit(t) {
                breaker.report(ticket, Health::Failing, t);
            }
        }
        b.iter(|| black_box(breaker.admit(black_box(10))))
    });
    g.finish();
}

criterion_group!(benches, parse_and_validate, breaker_decision);
criterion_main!(benches);
