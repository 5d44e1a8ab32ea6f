//! Werkzeug's URL matcher, for Quay's API rules: which rule Quay's router picks for a path.
//!
//! Usage: `RuleMatcher::new(rules)` once, with each rule's Flask path and methods; then
//! `matcher.find_excluding(method, path, &[])` → the rule and its converter values, as Werkzeug 3's
//! `StateMachineMatcher.match` would return them.
//!
//! Quay's repository converter (`apirepopath`, regex `[^/]+(/[^/]+)+`) matches slashes, so a
//! rule that uses it is one "final" regex over the rest of the path, and a repository may be
//! nested or end in a route word: `…/acme/app/build/tokens/` is the tokens view of
//! `acme/app/build`, not the build view of `acme/app`. Guessing by counting segments picks the
//! wrong view and the wrong repository; this port of the matcher (static transitions first, then
//! dynamic ones in Werkzeug's weight order, depth first, methods checked at the leaf) picks the
//! one Quay serves.

use std::cmp::Ordering;
use std::collections::HashMap;

use regex::Regex;

/// Werkzeug's `Weighting` (number of statics, their (position, -length), number of
/// arguments, converter weights), compared as Python compares the tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Weighting {
    statics: i64,
    static_weights: Vec<(i64, i64)>,
    arguments: i64,
    argument_weights: Vec<u32>,
}

impl Ord for Weighting {
    fn cmp(&self, other: &Self) -> Ordering {
        (
            self.statics,
            &self.static_weights,
            self.arguments,
            &self.argument_weights,
        )
            .cmp(&(
                other.statics,
                &other.static_weights,
                other.arguments,
                &other.argument_weights,
            ))
    }
}

impl PartialOrd for Weighting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One transition of the state machine: a static segment, or a regex over one segment (or,
/// when `final`, over the rest of the path).
#[derive(Debug, Clone)]
struct RulePart {
    /// The static text, or the regex source (compared for sharing states, as Werkzeug does).
    content: String,
    regex: Option<Regex>,
    is_final: bool,
    is_static: bool,
    /// A final part that ended in `/`: its regex captures the optional trailing slash last.
    suffixed: bool,
    weight: Weighting,
    /// Converter names with the regex group that captures each (resolved once, at load).
    variables: Vec<(String, usize)>,
}

impl PartialEq for RulePart {
    fn eq(&self, other: &Self) -> bool {
        self.content == other.content
            && self.is_final == other.is_final
            && self.is_static == other.is_static
            && self.suffixed == other.suffixed
            && self.weight == other.weight
    }
}

#[derive(Debug, Default)]
struct State {
    dynamic: Vec<(RulePart, usize)>,
    /// Rule indices that end here.
    rules: Vec<usize>,
    statics: HashMap<String, usize>,
}

/// A rule as Werkzeug holds it: its path and methods (HEAD implied by GET).
#[derive(Debug, Clone)]
pub struct Rule {
    pub path: String,
    pub methods: Vec<&'static str>,
}

impl Rule {
    fn allows(&self, method: &str) -> bool {
        self.methods.contains(&method) || (method == "HEAD" && self.methods.contains(&"GET"))
    }
}

/// What a path resolves to: the rule and the converter values by variable name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'m, 'p> {
    pub rule: usize,
    /// Converter name and value, borrowed from the rule and from the path: a match copies
    /// nothing.
    pub values: Vec<(&'m str, &'p str)>,
}

impl<'p> Found<'_, 'p> {
    pub fn value(&self, name: &str) -> Option<&'p str> {
        self.values
            .iter()
            .find(|(variable, _)| *variable == name)
            .map(|(_, value)| *value)
    }
}

/// The converters Quay's API rules use: (regex, weight, matches slashes).
fn converter(name: &str, arguments: &str) -> (String, u32, bool) {
    match name {
        // path_converters.APIRepositoryPathConverter.
        "apirepopath" => (r"([^/]+(/[^/]+)+)".into(), 200, true),
        // RegexConverter(url_map, regex): part isolating unless the regex has a slash.
        "regex" => {
            let regex = arguments
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_string();
            let slashes = regex.contains('/');
            (regex, 100, slashes)
        }
        "int" => (r"\d+".into(), 50, false),
        "path" => (r"[^/].*?".into(), 200, true),
        // UnicodeConverter, the default.
        _ => ("[^/]+".into(), 100, false),
    }
}

/// A token of a rule string, as Werkzeug's `_part_re` splits it.
enum Token<'r> {
    Slash,
    Static(&'r str),
    Variable {
        converter: &'r str,
        arguments: &'r str,
        name: &'r str,
    },
}

fn tokens(rule: &str) -> Vec<Token<'_>> {
    let mut out = Vec::new();
    let mut rest = rule;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('/') {
            out.push(Token::Slash);
            rest = after;
        } else if rest.starts_with('<') {
            let end = rest.find('>').unwrap_or(rest.len() - 1);
            let inner = &rest[1..end];
            let (spec, name) = inner.rsplit_once(':').unwrap_or(("", inner));
            let (converter, arguments) = match spec.split_once('(') {
                Some((converter, arguments)) => {
                    (converter, arguments.strip_suffix(')').unwrap_or(arguments))
                }
                None => (spec, ""),
            };
            out.push(Token::Variable {
                converter,
                arguments,
                name,
            });
            rest = &rest[end + 1..];
        } else {
            let end = rest.find(['/', '<']).unwrap_or(rest.len());
            out.push(Token::Static(&rest[..end]));
            rest = &rest[end..];
        }
    }
    out
}

/// Werkzeug's `Rule._parse_rule`: the rule's parts, one per segment until a converter that
/// matches slashes makes the rest one final part.
fn parse_rule(rule: &str) -> Vec<RulePart> {
    struct Pending {
        content: String,
        is_static: bool,
        is_final: bool,
        static_weights: Vec<(i64, i64)>,
        argument_weights: Vec<u32>,
        variables: Vec<String>,
    }
    impl Pending {
        fn new() -> Self {
            Self {
                content: String::new(),
                is_static: true,
                is_final: false,
                static_weights: Vec::new(),
                argument_weights: Vec::new(),
                variables: Vec::new(),
            }
        }
        fn finish(self, suffixed: bool) -> RulePart {
            let weight = Weighting {
                statics: -(self.static_weights.len() as i64),
                static_weights: self.static_weights,
                arguments: -(self.argument_weights.len() as i64),
                argument_weights: self.argument_weights,
            };
            // Our own table's converters: a regex that does not compile leaves the part
            // without one, and `RuleMatcher::uncompiled` (checked by a test) counts it.
            let regex = (!self.is_static)
                .then(|| Regex::new(&format!(r"\A(?:{})\z", self.content)).ok())
                .flatten();
            let variables = self
                .variables
                .into_iter()
                .enumerate()
                .map(|(index, name)| {
                    let group = regex
                        .as_ref()
                        .and_then(|regex| {
                            let wanted = format!("w{index}");
                            regex
                                .capture_names()
                                .position(|group| group == Some(wanted.as_str()))
                        })
                        .unwrap_or(0);
                    (name, group)
                })
                .collect();
            RulePart {
                content: self.content,
                regex,
                is_final: self.is_final,
                is_static: self.is_static,
                suffixed,
                weight,
                variables,
            }
        }
    }
    let mut parts = Vec::new();
    let mut pending = Pending::new();
    for token in tokens(rule) {
        match token {
            Token::Static(text) => {
                let position = pending.static_weights.len() as i64;
                pending
                    .static_weights
                    .push((position, -(text.len() as i64)));
                if pending.is_static {
                    pending.content.push_str(text);
                } else {
                    pending.content.push_str(&regex::escape(text));
                }
            }
            Token::Variable {
                converter: name,
                arguments,
                name: variable,
            } => {
                if pending.is_static {
                    pending.content = regex::escape(&pending.content);
                }
                pending.is_static = false;
                let (regex, weight, matches_slashes) = converter(name, arguments);
                pending.is_final |= matches_slashes;
                let group = pending.variables.len();
                pending.content.push_str(&format!("(?P<w{group}>{regex})"));
                pending.argument_weights.push(weight);
                pending.variables.push(variable.to_string());
            }
            Token::Slash => {
                if pending.is_final {
                    pending.content.push('/');
                } else {
                    parts.push(std::mem::replace(&mut pending, Pending::new()).finish(false));
                }
            }
        }
    }
    // A final part that ends in a slash takes the slash as an optional last group, so the
    // matcher can tell "matched with the slash" from "slash missing" (Werkzeug's
    // `(?<!/)(/?)`; the look-behind always holds here: what precedes is never a slash).
    let suffixed = pending.is_final && pending.content.ends_with('/');
    if suffixed {
        pending.content.pop();
        pending.content.push_str("(/?)");
    }
    parts.push(pending.finish(suffixed));
    if suffixed {
        parts.push(RulePart {
            content: String::new(),
            regex: None,
            is_final: false,
            is_static: true,
            suffixed: false,
            weight: Weighting {
                statics: 0,
                static_weights: Vec::new(),
                arguments: 0,
                argument_weights: Vec::new(),
            },
            variables: Vec::new(),
        });
    }
    parts
}

/// The state machine over a set of rules.
#[derive(Debug)]
pub struct RuleMatcher {
    states: Vec<State>,
    rules: Vec<Rule>,
}

/// A depth-first search's outcome below one state.
/// The converter values are in the search's `values` stack when it returns a rule.
enum Search {
    Found(usize),
    /// Werkzeug's `SlashRequired`: the rule exists with a trailing slash; Quay redirects there.
    SlashRequired(usize),
    None,
}

impl RuleMatcher {
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut matcher = Self {
            states: vec![State::default()],
            rules: Vec::new(),
        };
        for rule in rules {
            let index = matcher.rules.len();
            let mut state = 0;
            for part in parse_rule(&rule.path) {
                state = if part.is_static {
                    match matcher.states[state].statics.get(&part.content) {
                        Some(&next) => next,
                        None => {
                            let next = matcher.new_state();
                            matcher.states[state].statics.insert(part.content, next);
                            next
                        }
                    }
                } else {
                    let existing = matcher.states[state]
                        .dynamic
                        .iter()
                        .find(|(test, _)| *test == part)
                        .map(|(_, next)| *next);
                    match existing {
                        Some(next) => next,
                        None => {
                            let next = matcher.new_state();
                            matcher.states[state].dynamic.push((part, next));
                            next
                        }
                    }
                };
            }
            matcher.states[state].rules.push(index);
            matcher.rules.push(rule);
        }
        // `StateMachineMatcher.update`: dynamic transitions by weight (a stable sort, so equal
        // weights keep the order the rules were added in).
        for state in &mut matcher.states {
            state.dynamic.sort_by(|a, b| a.0.weight.cmp(&b.0.weight));
        }
        matcher
    }

    /// Dynamic parts whose regex did not compile (they can never match): must be zero.
    #[cfg(test)]
    pub fn uncompiled(&self) -> usize {
        self.states
            .iter()
            .flat_map(|state| &state.dynamic)
            .filter(|(part, _)| part.regex.is_none())
            .count()
    }

    fn new_state(&mut self) -> usize {
        self.states.push(State::default());
        self.states.len() - 1
    }

    /// The rule Werkzeug picks for `method` on `path` (already as the router sees it: one
    /// leading slash, no query). A path that only matches with a slash added counts as that
    /// rule (Quay answers with a redirect to it, which comes back through the proxy).
    /// With `excluded`, as if those rules were not registered: a Quay feature that is off
    /// drops its rules, and Werkzeug then finds the next one.
    pub fn find_excluding<'m, 'p>(
        &'m self,
        method: &str,
        path: &'p str,
        excluded: &[usize],
    ) -> Option<Found<'m, 'p>> {
        let parts: Vec<&'p str> = path.split('/').collect();
        let search = Searcher {
            matcher: self,
            method,
            excluded,
            path,
        };
        let mut values = Vec::new();
        match search.run(0, &parts, &mut values) {
            Search::Found(rule) | Search::SlashRequired(rule) => Some(Found { rule, values }),
            Search::None => None,
        }
    }
}

/// One depth-first search: the method asked for and the rules to act as if absent.
struct Searcher<'s, 'm, 'p> {
    matcher: &'m RuleMatcher,
    method: &'s str,
    excluded: &'s [usize],
    /// The whole path: a final part matches the rest of it, a slice of it.
    path: &'p str,
}

impl<'m, 'p> Searcher<'_, 'm, 'p> {
    fn allows(&self, rule: usize) -> bool {
        !self.excluded.contains(&rule) && self.matcher.rules[rule].allows(self.method)
    }

    /// The rest of the path from `part` on (`parts.join("/")` without the copy): `part` and
    /// what follows are slices of `self.path` in order, one `/` apart.
    fn rest_of_path(&self, part: &'p str, remaining: &[&'p str]) -> &'p str {
        let start = (part.as_ptr() as usize).wrapping_sub(self.path.as_ptr() as usize);
        match self.path.get(start..) {
            Some(rest) if !remaining.is_empty() && rest.starts_with(part) => rest,
            _ => part,
        }
    }

    /// Searches below `state`; converter values found on the way are pushed on `values`, and
    /// taken off again when a branch fails.
    fn run(&self, state: usize, parts: &[&'p str], values: &mut Vec<(&'m str, &'p str)>) -> Search {
        let here = &self.matcher.states[state];
        let Some((&part, remaining)) = parts.split_first() else {
            if let Some(&rule) = here.rules.iter().find(|&&rule| self.allows(rule)) {
                return Search::Found(rule);
            }
            if let Some(&rule) = here.statics.get("").and_then(|&slash| {
                self.matcher.states[slash]
                    .rules
                    .iter()
                    .find(|&&rule| self.allows(rule))
            }) {
                // Every Flask rule is strict about slashes.
                return Search::SlashRequired(rule);
            }
            return Search::None;
        };
        if let Some(&next) = here.statics.get(part) {
            match self.run(next, remaining, values) {
                Search::None => {}
                found => return found,
            }
        }
        let depth = values.len();
        for (test, next) in &here.dynamic {
            let Some(regex) = &test.regex else { continue };
            // A final part matches the rest of the path at once.
            let (target, mut rest): (&'p str, &[&'p str]) = if test.is_final {
                (self.rest_of_path(part, remaining), &[])
            } else {
                (part, remaining)
            };
            // Most transitions tried do not match: the DFA answers that without the cost of
            // finding capture groups, which only a match needs.
            if !regex.is_match(target) {
                continue;
            }
            let Some(captures) = regex.captures(target) else {
                continue;
            };
            for (variable, group) in &test.variables {
                if let Some(capture) = captures.get(*group) {
                    values.push((variable.as_str(), capture.as_str()));
                }
            }
            if test.suffixed && captures.get(captures.len() - 1).map(|m| m.as_str()) == Some("/") {
                rest = &[""];
            }
            match self.run(*next, rest, values) {
                Search::None => values.truncate(depth),
                found => return found,
            }
        }
        Search::None
    }
}
