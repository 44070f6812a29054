//! Prompt templates: parses `{{placeholder}}` text once, refusing unknown names, and renders it for one ticket.

use serde_json::Value;

/// Every placeholder a template may use, for error messages and documentation.
pub const PLACEHOLDERS: &str =
    "{{id}}, {{title}}, {{body}}, {{outputs.<phase>}}, {{feedback}}, {{attempt}}";

/// Longest phase name `{{outputs.<phase>}}` accepts: Postgres' identifier limit.
const MAX_PHASE_LEN: usize = 63;

/// A parsed prompt template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Field(Field),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    Id,
    Title,
    Body,
    Output(String),
    Feedback,
    Attempt,
}

impl Field {
    fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "id" => Field::Id,
            "title" => Field::Title,
            "body" => Field::Body,
            "feedback" => Field::Feedback,
            "attempt" => Field::Attempt,
            _ => {
                let phase = name.strip_prefix("outputs.")?;
                if !is_phase_name(phase) {
                    return None;
                }
                Field::Output(phase.to_string())
            }
        })
    }

    fn name(&self) -> String {
        match self {
            Field::Id => "id".into(),
            Field::Title => "title".into(),
            Field::Body => "body".into(),
            Field::Output(phase) => format!("outputs.{phase}"),
            Field::Feedback => "feedback".into(),
            Field::Attempt => "attempt".into(),
        }
    }
}

fn is_phase_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_PHASE_LEN
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What a template is rendered with.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a> {
    pub id: i64,
    pub title: &'a str,
    pub body: &'a str,
    /// Earlier phases' accepted outputs, keyed by phase name.
    pub outputs: &'a Value,
    /// Why the previous attempt was refused, if it was.
    pub feedback: Option<&'a str>,
    /// 1-based.
    pub attempt: i32,
}

// Templates are shown back in SQL errors; a long unclosed tail must not flood them.
fn excerpt(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &s[..cut]),
        None => s.to_string(),
    }
}

impl Template {
    /// Refuses unknown placeholders and an unclosed `{{`, naming the offending text.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                return Err(format!(
                    "unclosed \"{{{{\" at \"{}\"; the placeholders are {PLACEHOLDERS}",
                    excerpt(&rest[open..])
                ));
            };
            let name = after[..close].trim();
            let Some(field) = Field::parse(name) else {
                return Err(format!(
                    "unknown placeholder \"{{{{{}}}}}\"; the placeholders are {PLACEHOLDERS}",
                    excerpt(&after[..close])
                ));
            };
            parts.push(Part::Field(field));
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Substituted values are never scanned again, so a ticket body holding `{{title}}` stays literal.
    pub fn render(&self, vars: &Vars) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Field(Field::Id) => out.push_str(&vars.id.to_string()),
                Part::Field(Field::Title) => out.push_str(vars.title),
                Part::Field(Field::Body) => out.push_str(vars.body),
                Part::Field(Field::Output(phase)) => {
                    out.push_str(
                        vars.outputs
                            .get(phase)
                            .and_then(Value::as_str)
                            .unwrap_or(""),
                    );
                }
                Part::Field(Field::Feedback) => out.push_str(vars.feedback.unwrap_or("")),
                Part::Field(Field::Attempt) => out.push_str(&vars.attempt.to_string()),
            }
        }
        out
    }

    /// The placeholders used, without braces or inner whitespace (`outputs.refine_spec`), each once, in order of first use.
    pub fn placeholders(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for part in &self.parts {
            if let Part::Field(f) = part {
                let name = f.name();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars<'a>(outputs: &'a Value) -> Vars<'a> {
        Vars {
            id: 42,
            title: "Health endpoint",
            body: "Add GET /healthz.",
            outputs,
            feedback: Some("section \"## Context\" is missing"),
            attempt: 2,
        }
    }

    fn render(template: &str, vars: &Vars) -> String {
        Template::parse(template).unwrap().render(vars)
    }

    #[test]
    fn renders_every_placeholder() {
        let outputs = json!({"refine_spec": "## Summary\n..."});
        let v = vars(&outputs);
        assert_eq!(
            render(
                "#{{id}} {{title}}\n{{body}}\nSpec:\n{{outputs.refine_spec}}\nWhy: {{feedback}} (try {{attempt}})",
                &v
            ),
            "#42 Health endpoint\nAdd GET /healthz.\nSpec:\n## Summary\n...\nWhy: section \"## Context\" is missing (try 2)"
        );
    }

    #[test]
    fn whitespace_inside_braces_is_allowed() {
        let outputs = json!({"a_1": "A"});
        let v = vars(&outputs);
        assert_eq!(
            render("{{ title }}|{{\tid\n}}|{{  outputs.a_1}}", &v),
            "Health endpoint|42|A"
        );
    }

    #[test]
    fn lone_braces_are_literal() {
        let outputs = json!({});
        let v = vars(&outputs);
        for text in [
            "",
            "plain",
            "{",
            "}",
            "}}",
            "a { b } c",
            "{\"json\": {\"nested\": 1}}",
            "fn main() { x }}",
            "{ {title} }",
        ] {
            assert_eq!(render(text, &v), text, "{text:?}");
            assert_eq!(
                Template::parse(text).unwrap().placeholders(),
                Vec::<String>::new()
            );
        }
        assert_eq!(
            render("{\"t\": \"{{title}}\"}", &v),
            "{\"t\": \"Health endpoint\"}"
        );
        assert_eq!(render("é{{id}}ü", &v), "é42ü");
    }

    #[test]
    fn missing_or_non_string_outputs_and_no_feedback_render_empty() {
        let outputs = json!({"refine_spec": 7, "implement": null, "review": {"x": "y"}});
        let mut v = vars(&outputs);
        v.feedback = None;
        assert_eq!(
            render(
                "[{{outputs.refine_spec}}][{{outputs.implement}}][{{outputs.review}}][{{outputs.absent}}][{{feedback}}]",
                &v
            ),
            "[][][][][]"
        );
        let not_an_object = json!("text");
        let v = vars(&not_an_object);
        assert_eq!(render("[{{outputs.refine_spec}}]", &v), "[]");
        let null = Value::Null;
        assert_eq!(render("[{{outputs.refine_spec}}]", &vars(&null)), "[]");
    }

    #[test]
    fn numbers_render_in_decimal() {
        let outputs = json!({});
        let mut v = vars(&outputs);
        v.id = -9_007_199_254_740_993;
        v.attempt = 1;
        assert_eq!(render("{{id}}/{{attempt}}", &v), "-9007199254740993/1");
    }

    #[test]
    fn substituted_values_are_not_expanded_again() {
        let outputs = json!({"refine_spec": "{{id}} {{outputs.refine_spec}}"});
        let v = Vars {
            id: 1,
            title: "{{body}}",
            body: "{{title}} {{titel}} {{",
            outputs: &outputs,
            feedback: Some("{{attempt}}"),
            attempt: 3,
        };
        assert_eq!(
            render(
                "{{title}}|{{body}}|{{outputs.refine_spec}}|{{feedback}}|{{attempt}}",
                &v
            ),
            "{{body}}|{{title}} {{titel}} {{|{{id}} {{outputs.refine_spec}}|{{attempt}}|3"
        );
    }

    #[test]
    fn placeholders_are_listed_once_in_order_of_first_use() {
        let t = Template::parse(
            "{{ outputs.refine_spec }} {{title}} {{outputs.implement}} {{title}} {{attempt}} {{outputs.refine_spec}}",
        )
        .unwrap();
        assert_eq!(
            t.placeholders(),
            vec![
                "outputs.refine_spec",
                "title",
                "outputs.implement",
                "attempt"
            ]
        );
        assert_eq!(
            Template::parse("{{id}}{{body}}{{feedback}}")
                .unwrap()
                .placeholders(),
            vec!["id", "body", "feedback"]
        );
    }

    #[test]
    fn parsing_is_deterministic() {
        let a = Template::parse("x {{ title }} y").unwrap();
        let b = Template::parse("x {{title}} y").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.clone(), a);
    }

    fn parse_err(s: &str) -> String {
        let e = Template::parse(s).unwrap_err();
        assert!(
            e.ends_with(&format!("the placeholders are {PLACEHOLDERS}")),
            "{e}"
        );
        e
    }

    #[test]
    fn refuses_unknown_placeholders_naming_them() {
        assert_eq!(
            parse_err("Hello {{titel}}!"),
            format!("unknown placeholder \"{{{{titel}}}}\"; the placeholders are {PLACEHOLDERS}")
        );
        for (text, named) in [
            ("{{outputs.}}", "{{outputs.}}"),
            ("{{outputs.Bad-Name}}", "{{outputs.Bad-Name}}"),
            ("{{outputs.RefineSpec}}", "{{outputs.RefineSpec}}"),
            ("{{outputs.9lives}}", "{{outputs.9lives}}"),
            ("{{outputs.a b}}", "{{outputs.a b}}"),
            ("{{outputs}}", "{{outputs}}"),
            ("{{outputs..x}}", "{{outputs..x}}"),
            ("{{outputs.x.y}}", "{{outputs.x.y}}"),
            ("{{ Title }}", "{{ Title }}"),
            ("{{}}", "{{}}"),
            ("{{  }}", "{{  }}"),
            ("{{{title}}}", "{{{title}}"),
            ("{{title attempt}}", "{{title attempt}}"),
            ("ok {{id}} then {{ bodyy }}", "{{ bodyy }}"),
        ] {
            let e = parse_err(text);
            assert!(
                e.starts_with(&format!("unknown placeholder \"{named}\"")),
                "{text:?}: {e}"
            );
        }
    }

    #[test]
    fn phase_names_are_limited_to_63_characters() {
        let ok = format!("{{{{outputs.{}}}}}", "a".repeat(63));
        assert_eq!(
            Template::parse(&ok).unwrap().placeholders(),
            vec![format!("outputs.{}", "a".repeat(63))]
        );
        let too_long = format!("{{{{outputs.{}}}}}", "a".repeat(64));
        assert!(parse_err(&too_long).starts_with("unknown placeholder"));
        assert!(Template::parse("{{outputs._x9}}").is_ok());
    }

    #[test]
    fn refuses_an_unclosed_placeholder() {
        assert_eq!(
            parse_err("Ticket {{title"),
            format!("unclosed \"{{{{\" at \"{{{{title\"; the placeholders are {PLACEHOLDERS}")
        );
        assert!(parse_err("{{").starts_with("unclosed \"{{\" at \"{{\""));
        assert!(
            parse_err("{{id}} and {{ title }").starts_with("unclosed \"{{\" at \"{{ title }\"")
        );
        // The excerpt is cut so a long template does not flood the error.
        let e = parse_err(&format!("{{{{{}", "x".repeat(5000)));
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn long_unknown_placeholders_are_cut_short() {
        let e = parse_err(&format!("{{{{{}}}}}", "y".repeat(5000)));
        assert!(e.len() < 200, "{e}");
        assert!(e.contains("..."));
    }
}
