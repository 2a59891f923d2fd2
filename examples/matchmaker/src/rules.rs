//! The matching rules: the code a game studio changes and hot-reloads.
//! Edit `DEFAULT` (or write `opposite-gender` / `rating-window` into the
//! file named by `MATCH_RULES_FILE`), rebuild, `hotsock reload`: waiting
//! players stay in the pool and the next match follows the new rule.
//!
//! A rule says two things: where the pool's index should look for a
//! partner (`search`), and whether two players may be matched
//! (`compatible`, the final word on every candidate the index offers).

use crate::pool::Player;

/// The rule set used when `MATCH_RULES_FILE` does not say otherwise.
pub(crate) const DEFAULT: RuleSet = RuleSet::OppositeGender;

/// How players are paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RuleSet {
    /// The original rule: same game, a man only with a woman.
    OppositeGender,
    /// Same game, ratings within a window that widens the longer the
    /// players have waited (100 points, plus 50 per second of waiting).
    RatingWindow,
}

impl RuleSet {
    /// The rule set for this worker: read once, at worker start.
    pub(crate) fn active() -> RuleSet {
        let from_file = std::env::var("MATCH_RULES_FILE").ok().and_then(|path| std::fs::read_to_string(path).ok());
        match from_file.as_deref().map(str::trim) {
            Some("opposite-gender") => RuleSet::OppositeGender,
            Some("rating-window") => RuleSet::RatingWindow,
            _ => DEFAULT,
        }
    }

    /// Its name in `matched` messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RuleSet::OppositeGender => "opposite-gender",
            RuleSet::RatingWindow => "rating-window",
        }
    }

    /// Where a partner of `me` can be found. The index returns, in
    /// longest-waiting order, only players this names, so it must name
    /// every player `compatible` could accept.
    pub(crate) fn search(self, me: &Player) -> Search {
        match self {
            RuleSet::OppositeGender => Search::Gender(if me.gender == "m" { "f" } else { "m" }),
            RuleSet::RatingWindow => Search::Rating,
        }
    }

    /// The largest rating gap `rating-window` allows between two players
    /// who have waited since `a_since` and `b_since`: it widens with the
    /// longer wait, so it never grows as either player gets younger.
    pub(crate) fn window(a_since: i64, b_since: i64, now_ms: i64) -> i64 {
        let waited_s = (now_ms - a_since.min(b_since)).max(0) / 1000;
        100 + 50 * waited_s
    }

    /// Whether `a` and `b` may be matched at `now_ms`.
    pub(crate) fn compatible(self, a: &Player, b: &Player, now_ms: i64) -> bool {
        if a.game != b.game {
            return false;
        }
        match self {
            RuleSet::OppositeGender => a.gender != b.gender,
            RuleSet::RatingWindow => (a.rating - b.rating).abs() <= RuleSet::window(a.since, b.since, now_ms),
        }
    }
}

/// Which of the pool's indexes finds a rule's partners (`index.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Search {
    /// Waiting players of the same game with this gender.
    Gender(&'static str),
    /// Waiting players of the same game whose rating is within
    /// `RuleSet::window` of the player's.
    Rating,
}
