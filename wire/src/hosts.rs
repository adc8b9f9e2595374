//! Host templates (SPEC §2): `{port}-{sandbox}.sandbox.localhost` and friends, parsed once and matched
//! label by label. Control renders them into URLs; edges match request hosts against them.

use std::fmt;

use crate::ids::{is_dns_label, is_host_id};

/// The templates used when none is given on the command line.
pub const DEFAULT_HOST_TEMPLATES: [&str; 4] = [
    "{port}-{sandbox}.sandbox.localhost",
    "sb-{sandbox}-p{port}.workers.localhost",
    "{slug}.preview.localhost",
    "{app}.{workspace}.apps.localhost",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placeholder {
    Port,
    Sandbox,
    Slug,
    App,
    Workspace,
}

impl Placeholder {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "port" => Self::Port,
            "sandbox" => Self::Sandbox,
            "slug" => Self::Slug,
            "app" => Self::App,
            "workspace" => Self::Workspace,
            _ => return None,
        })
    }

    /// Whether `c` may appear in a value of this placeholder.
    fn may_contain(self, c: u8) -> bool {
        match self {
            Self::Port => c.is_ascii_digit(),
            Self::Sandbox | Self::Slug => c.is_ascii_lowercase() || c.is_ascii_digit(),
            Self::App | Self::Workspace => c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-',
        }
    }

    /// Whether `value` is a whole, valid value for this placeholder.
    fn accepts(self, value: &str) -> bool {
        match self {
            Self::Port => parse_port(value).is_some(),
            Self::Sandbox | Self::Slug => is_host_id(value),
            Self::App | Self::Workspace => is_dns_label(value),
        }
    }
}

fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || s.starts_with('0') {
        return None;
    }
    // Every request's host goes through here: digits folded by hand (at most five, so no overflow).
    let mut n = 0u32;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(b - b'0');
    }
    u16::try_from(n).ok().filter(|p| *p != 0)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(String),
    Value(Placeholder),
}

/// What a host template routes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateKind {
    SandboxPort,
    Preview,
    Deployment,
}

/// What a host resolved to through a template. Borrowed from the (normalised) host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMatch<'a> {
    SandboxPort { sandbox: &'a str, port: u16 },
    Preview { slug: &'a str },
    Deployment { app: &'a str, workspace: &'a str },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("host template {0:?}: unknown placeholder {{{1}}}")]
    UnknownPlaceholder(String, String),
    #[error("host template {0:?}: unclosed or stray brace")]
    Brace(String),
    #[error("host template {0:?}: two placeholders must be separated by literal text")]
    Adjacent(String),
    #[error("host template {0:?}: needs {{port}} and {{sandbox}}, or {{slug}}, or {{app}} and {{workspace}}, each once")]
    Placeholders(String),
    #[error("host template {0:?}: literal text must be lowercase letters, digits, '-' or '.'")]
    Literal(String),
    #[error("host template {0:?}: the text between two placeholders could be part of either value")]
    Ambiguous(String),
}

/// One step of a [`HostTemplate`]'s plan.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Literal(String),
    /// A value ending at the first `stop` byte (one it cannot contain), or, with none, taking the rest.
    Value(Placeholder, Option<u8>),
}

/// A parsed host template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostTemplate {
    source: String,
    kind: TemplateKind,
    /// Per DNS label, its tokens.
    labels: Vec<Vec<Token>>,
    /// The trailing labels with no placeholder (e.g. `.sandbox.localhost`), checked first: cheap rejection.
    suffix: String,
    /// How many labels precede the suffix: the only ones a host's labels are matched against one by one.
    leading: usize,
    /// The labels before the suffix as one run of steps, the dots between them literal text (no value
    /// holds a dot), matched left to right with no search and no backtracking, when every value but the
    /// last is followed by a character it cannot contain: every default template, and every route lookup
    /// goes through one. `None` for a template that needs the label-by-label matcher.
    plan: Option<Vec<Step>>,
}

impl HostTemplate {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let err_src = || source.to_string();
        let lowered = source.trim().to_ascii_lowercase();
        let mut labels = Vec::new();
        let mut seen: Vec<Placeholder> = Vec::new();
        for label in lowered.split('.') {
            let mut tokens = Vec::new();
            let mut rest = label;
            while !rest.is_empty() {
                if let Some(after) = rest.strip_prefix('{') {
                    let end = after.find('}').ok_or_else(|| TemplateError::Brace(err_src()))?;
                    let name = &after[..end];
                    let p = Placeholder::parse(name)
                        .ok_or_else(|| TemplateError::UnknownPlaceholder(err_src(), name.to_string()))?;
                    if matches!(tokens.last(), Some(Token::Value(_))) {
                        return Err(TemplateError::Adjacent(err_src()));
                    }
                    if seen.contains(&p) {
                        return Err(TemplateError::Placeholders(err_src()));
                    }
                    seen.push(p);
                    tokens.push(Token::Value(p));
                    rest = &after[end + 1..];
                } else {
                    let end = rest.find('{').unwrap_or(rest.len());
                    let lit = &rest[..end];
                    if lit.contains('}') {
                        return Err(TemplateError::Brace(err_src()));
                    }
                    if !lit.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                        return Err(TemplateError::Literal(err_src()));
                    }
                    tokens.push(Token::Literal(lit.to_string()));
                    rest = &rest[end..];
                }
            }
            if tokens.is_empty() {
                return Err(TemplateError::Literal(err_src()));
            }
            // `{app}-{workspace}` renders `my-app`/`team` and `my`/`app-team` as one host: the text between
            // two values must hold a character one of them cannot, so that one host names one route.
            for w in tokens.windows(3) {
                if let [Token::Value(a), Token::Literal(lit), Token::Value(b)] = w {
                    if lit.bytes().all(|c| a.may_contain(c) && b.may_contain(c)) {
                        return Err(TemplateError::Ambiguous(err_src()));
                    }
                }
            }
            labels.push(tokens);
        }
        seen.sort_by_key(|p| *p as u8);
        use Placeholder::*;
        let kind = match seen.as_slice() {
            [Port, Sandbox] => TemplateKind::SandboxPort,
            [Slug] => TemplateKind::Preview,
            [App, Workspace] => TemplateKind::Deployment,
            _ => return Err(TemplateError::Placeholders(err_src())),
        };
        let fixed =
            labels.iter().rev().take_while(|l| l.iter().all(|t| matches!(t, Token::Literal(_)))).count();
        let suffix = labels[labels.len() - fixed..]
            .iter()
            .map(|l| format!(".{}", render_literal(l)))
            .collect::<String>();
        let leading = labels.len() - fixed;
        let plan = plan(&labels[..leading]);
        Ok(Self { source: lowered, kind, labels, suffix, leading, plan })
    }

    pub fn kind(&self) -> TemplateKind {
        self.kind
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Matches a host already normalised by [`normalize_host`].
    pub fn matches<'h>(&self, host: &'h str) -> Option<HostMatch<'h>> {
        // Every request's host comes here: the suffix is compared once, as a whole, not label by label.
        let head = host.strip_suffix(self.suffix.as_str())?;
        let values = match &self.plan {
            Some(plan) => follow(plan, head)?,
            None => self.match_labels(head)?,
        };
        self.found(values)
    }

    /// The label-by-label matcher, which tries each split point where a plan cannot.
    fn match_labels<'h>(&self, head: &'h str) -> Option<[Option<&'h str>; 5]> {
        let mut values: [Option<&'h str>; 5] = [None; 5];
        let mut rest = head;
        for (i, pattern) in self.labels[..self.leading].iter().enumerate() {
            // The last label takes the rest: a dot in it never matches, as neither literals nor values
            // may hold one, so most templates (one label before the suffix) need no search for dots.
            let (label, tail) = if i + 1 == self.leading { (rest, "") } else { rest.split_once('.')? };
            if !match_label(pattern, label, &mut values) {
                return None;
            }
            rest = tail;
        }
        Some(values)
    }

    fn found<'h>(&self, values: [Option<&'h str>; 5]) -> Option<HostMatch<'h>> {
        let get = |p: Placeholder| values[p as usize];
        Some(match self.kind {
            TemplateKind::SandboxPort => HostMatch::SandboxPort {
                sandbox: get(Placeholder::Sandbox)?,
                port: parse_port(get(Placeholder::Port)?)?,
            },
            TemplateKind::Preview => HostMatch::Preview { slug: get(Placeholder::Slug)? },
            TemplateKind::Deployment => {
                HostMatch::Deployment { app: get(Placeholder::App)?, workspace: get(Placeholder::Workspace)? }
            }
        })
    }

    /// Renders the host for the given values; placeholders this template lacks are ignored.
    pub fn render(&self, port: Option<u16>, sandbox: &str, slug: &str, app: &str, workspace: &str) -> String {
        let port = port.map(|p| p.to_string()).unwrap_or_default();
        let mut out = String::new();
        for (i, label) in self.labels.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            for token in label {
                out.push_str(match token {
                    Token::Literal(l) => l,
                    Token::Value(Placeholder::Port) => &port,
                    Token::Value(Placeholder::Sandbox) => sandbox,
                    Token::Value(Placeholder::Slug) => slug,
                    Token::Value(Placeholder::App) => app,
                    Token::Value(Placeholder::Workspace) => workspace,
                });
            }
        }
        out
    }
}

impl fmt::Display for HostTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn render_literal(tokens: &[Token]) -> String {
    tokens
        .iter()
        .filter_map(|t| match t {
            Token::Literal(l) => Some(l.as_str()),
            Token::Value(_) => None,
        })
        .collect()
}

/// The plan for these labels (see [`HostTemplate::plan`]), if they need no backtracking.
fn plan(labels: &[Vec<Token>]) -> Option<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    let push_literal = |steps: &mut Vec<Step>, lit: &str| match steps.last_mut() {
        Some(Step::Literal(l)) => l.push_str(lit),
        _ => steps.push(Step::Literal(lit.to_string())),
    };
    for (i, label) in labels.iter().enumerate() {
        if i > 0 {
            push_literal(&mut steps, ".");
        }
        for token in label {
            match token {
                Token::Literal(l) => push_literal(&mut steps, l),
                Token::Value(p) => steps.push(Step::Value(*p, None)),
            }
        }
    }
    for i in 0..steps.len() {
        let stop = match steps.get(i + 1) {
            Some(Step::Literal(l)) => l.bytes().next(),
            _ => None,
        };
        if let Step::Value(p, end) = &mut steps[i] {
            match stop {
                Some(c) if p.may_contain(c) => return None,
                _ => *end = stop,
            }
        }
    }
    Some(steps)
}

/// Follows a plan through the head of a host (the part before the template's suffix).
#[inline]
fn follow<'h>(plan: &[Step], head: &'h str) -> Option<[Option<&'h str>; 5]> {
    let mut values: [Option<&'h str>; 5] = [None; 5];
    let mut rest = head;
    for step in plan {
        match step {
            Step::Literal(lit) => rest = rest.strip_prefix(lit.as_str())?,
            Step::Value(p, stop) => {
                // A stop byte is ASCII, so the split is at a character boundary.
                let end = match stop {
                    Some(c) => rest.bytes().position(|b| b == *c)?,
                    None => rest.len(),
                };
                let (value, tail) = rest.split_at(end);
                if !p.accepts(value) {
                    return None;
                }
                values[*p as usize] = Some(value);
                rest = tail;
            }
        }
    }
    rest.is_empty().then_some(values)
}

/// Matches one DNS label against its tokens, trying each split point for a placeholder (labels are at most
/// 63 bytes, and a template has at most two placeholders in a label, so this stays tiny).
fn match_label<'h>(tokens: &[Token], label: &'h str, values: &mut [Option<&'h str>; 5]) -> bool {
    match tokens.split_first() {
        None => label.is_empty(),
        Some((Token::Literal(lit), rest)) => {
            label.strip_prefix(lit.as_str()).is_some_and(|tail| match_label(rest, tail, values))
        }
        Some((Token::Value(p), rest)) => {
            // The two shapes every template has, without trying each split point (a route lookup does
            // this for every request). A value that ends its label is all that is left of it; a value
            // cannot run past a character it may not contain, so when the literal after it starts with
            // one, the value ends at that character's first occurrence or nowhere.
            let only_end = match rest.first() {
                None => Some(label.len()),
                // No such character in the label: an empty value, which no placeholder accepts.
                Some(Token::Literal(lit)) => lit
                    .bytes()
                    .next()
                    .filter(|c| !p.may_contain(*c))
                    .map(|stop| label.bytes().position(|b| b == stop).unwrap_or(0)),
                Some(Token::Value(_)) => None,
            };
            if let Some(end) = only_end {
                let value = &label[..end];
                let ok = end > 0 && p.accepts(value) && match_label(rest, &label[end..], values);
                if ok {
                    values[*p as usize] = Some(value);
                }
                return ok;
            }
            for end in (1..=label.len()).rev() {
                let Some(value) = label.get(..end) else { continue };
                if p.accepts(value) && match_label(rest, &label[end..], values) {
                    values[*p as usize] = Some(value);
                    return true;
                }
            }
            false
        }
    }
}

/// Lowercases a `Host` header value and drops a trailing `:port` and a trailing `.`.
/// Returns `None` for something that cannot be a host name.
pub fn normalize_host(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    // A header value's surrounding whitespace is ASCII (RFC 9110 §5.5).
    let raw = raw.trim_ascii();
    let without_port = if raw.starts_with('[') {
        // An IPv6 literal never names a route; keep it whole so lookups simply miss.
        raw
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => raw,
        }
    };
    let host = without_port.strip_suffix('.').unwrap_or(without_port);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    // Folded over every byte rather than stopping at the first: the compiler checks 16 or 32 at a time.
    if host.bytes().fold(false, |upper, b| upper | b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests;
