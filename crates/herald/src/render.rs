//! Templates: minijinja over the request's `template.data`, chosen by id and
//! locale (`pt-BR`, then `pt`, then the template's base). Undefined variables
//! are errors, so a request missing data is refused at the API, not sent with
//! a blank where the code should be. The HTML part escapes every value it
//! is given (`{{ name }}` of `<img onerror=…>` renders as text); a template
//! that means to insert markup says so with `{{ value|safe }}`. Subject and
//! text are plain text and are not escaped.

use std::collections::BTreeMap;

use herald_core::model::{Content, TemplateRef};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::config::TemplateConfig;

pub struct Templates {
    env: Environment<'static>,
    /// id → locales it has (besides the base).
    locales: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("unknown template {0:?}")]
    Unknown(String),
    #[error("{field}: {reason}")]
    Failed { field: &'static str, reason: String },
}

const PARTS: [&str; 3] = ["subject", "text", "html"];

fn name(id: &str, locale: Option<&str>, part: &str) -> String {
    match locale {
        Some(l) => format!("{id}@{l}/{part}"),
        None => format!("{id}/{part}"),
    }
}

impl Templates {
    pub fn new(cfg: &BTreeMap<String, TemplateConfig>) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // minijinja escapes by file extension (`.html`); Herald's parts are
        // named `id/html`, `id@locale/html`.
        env.set_auto_escape_callback(|name| {
            if name.ends_with("/html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        let mut locales = BTreeMap::new();
        for (id, t) in cfg {
            add(&mut env, id, None, t)?;
            for (loc, lt) in &t.locales {
                add(&mut env, id, Some(loc), lt)?;
            }
            locales.insert(id.clone(), t.locales.keys().cloned().collect());
        }
        Ok(Self { env, locales })
    }

    pub fn exists(&self, id: &str) -> bool {
        self.locales.contains_key(id)
    }

    /// Renders subject, text and html: each from the most specific locale
    /// that defines it.
    pub fn render(&self, t: &TemplateRef) -> Result<Content, RenderError> {
        let locales = self
            .locales
            .get(&t.id)
            .ok_or_else(|| RenderError::Unknown(t.id.clone()))?;
        let mut chain: Vec<Option<&str>> = Vec::with_capacity(3);
        if let Some(l) = t.locale.as_deref() {
            if locales.iter().any(|x| x == l) {
                chain.push(Some(l));
            }
            let lang = l.split(['-', '_']).next().unwrap_or(l);
            if lang != l && locales.iter().any(|x| x == lang) {
                chain.push(Some(lang));
            }
        }
        chain.push(None);
        let ctx = minijinja::Value::from_serialize(&t.data);
        let mut out = [None, None, None];
        for (i, part) in PARTS.iter().enumerate() {
            let Some(tmpl) = chain
                .iter()
                .find_map(|loc| self.env.get_template(&name(&t.id, *loc, part)).ok())
            else {
                continue;
            };
            let field = match i {
                0 => "template.subject",
                1 => "template.text",
                _ => "template.html",
            };
            let rendered = tmpl.render(&ctx).map_err(|e| RenderError::Failed {
                field,
                reason: e.to_string(),
            })?;
            out[i] = Some(rendered);
        }
        let [subject, text, html] = out;
        Ok(Content {
            subject,
            text,
            html,
        })
    }
}

fn add(
    env: &mut Environment<'static>,
    id: &str,
    locale: Option<&str>,
    t: &TemplateConfig,
) -> anyhow::Result<()> {
    for (part, src) in PARTS.iter().zip([&t.subject, &t.text, &t.html]) {
        if let Some(src) = src {
            let n = name(id, locale, part);
            env.add_template_owned(n.clone(), src.clone())
                .map_err(|e| anyhow::anyhow!("templates.{id}: {part} does not parse: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates() -> Templates {
        let cfg = crate::config::Config::load(None).expect("defaults");
        Templates::new(&cfg.templates).expect("templates compile")
    }

    fn tref(id: &str, locale: Option<&str>, data: serde_json::Value) -> TemplateRef {
        TemplateRef {
            id: id.into(),
            data: serde_json::from_value(data).expect("map"),
            locale: locale.map(Into::into),
        }
    }

    #[test]
    fn renders_with_locale_fallback() {
        let t = templates();
        let data = serde_json::json!({"name": "Zoë", "link": "https://x.example/r?a=1&b=2"});
        let pt = t
            .render(&tref("password-reset", Some("pt-BR"), data.clone()))
            .expect("renders");
        assert_eq!(pt.subject.as_deref(), Some("Redefina sua senha"));
        assert!(pt.text.as_deref().is_some_and(|s| s.contains("Olá Zoë")));
        let fr = t
            .render(&tref("password-reset", Some("fr"), data))
            .expect("falls back");
        assert_eq!(fr.subject.as_deref(), Some("Reset your password"));
    }

    #[test]
    fn missing_data_and_unknown_ids_are_errors() {
        let t = templates();
        let e = t
            .render(&tref("otp", None, serde_json::json!({})))
            .expect_err("code is missing");
        assert!(
            matches!(
                e,
                RenderError::Failed {
                    field: "template.text",
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            t.render(&tref("nope", None, serde_json::json!({}))),
            Err(RenderError::Unknown(_))
        ));
        let ok = t
            .render(&tref("otp", None, serde_json::json!({"code": "123456"})))
            .expect("renders");
        assert_eq!(
            ok.text.as_deref(),
            Some("Your code is 123456. It expires in 10 minutes.")
        );
    }

    #[test]
    fn html_parts_escape_what_they_are_given_and_text_parts_do_not() {
        let t = templates();
        let data = serde_json::json!({
            "name": "<img src=x onerror=alert(1)>",
            "link": "https://example.com/r?a=1&b=\"2\""
        });
        let c = t
            .render(&tref("password-reset", None, data))
            .expect("renders");
        let html = c.html.expect("an html part");
        assert!(!html.contains("<img"), "{html}");
        assert!(
            html.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{html}"
        );
        assert!(
            !html.contains("b=\"2\""),
            "attribute quotes escaped: {html}"
        );
        let text = c.text.expect("a text part");
        assert!(
            text.contains("<img src=x onerror=alert(1)>"),
            "plain text as given: {text}"
        );
    }

    #[test]
    fn a_template_may_mark_a_value_safe() {
        let mut cfg = std::collections::BTreeMap::new();
        cfg.insert(
            "digest".to_owned(),
            TemplateConfig {
                subject: Some("Digest".into()),
                text: Some("{{ body }}".into()),
                html: Some("<div>{{ body|safe }}</div><p>{{ footer }}</p>".into()),
                locales: Default::default(),
            },
        );
        let t = Templates::new(&cfg).expect("compiles");
        let c = t
            .render(&tref(
                "digest",
                None,
                serde_json::json!({"body": "<b>hi</b>", "footer": "<i>x</i>"}),
            ))
            .expect("renders");
        assert_eq!(
            c.html.as_deref(),
            Some("<div><b>hi</b></div><p>&lt;i&gt;x&lt;&#x2f;i&gt;</p>")
        );
    }
}
