<?php

// The matching rules: the code a game studio changes. Edit DEFAULT (or
// write `opposite-gender` / `rating-window` into the file named by
// MATCH_RULES_FILE) and save: with hotsock.dev.toml the watcher starts the
// next generation, no build, waiting players stay in the pool, and the next
// match follows the new rule. As examples/matchmaker/src/rules.rs.
//
// A rule says two things: where the pool's index should look for a partner
// (`search`), and whether two players may be matched (`compatible`, the
// final word on every candidate the index offers).

declare(strict_types=1);

namespace Matchmaker;

final class Rules
{
    /** The rule set used when MATCH_RULES_FILE does not say otherwise. */
    public const DEFAULT = 'opposite-gender';

    public const OPPOSITE_GENDER = 'opposite-gender';
    public const RATING_WINDOW = 'rating-window';

    /** The rule set for this worker: read once, at worker start. */
    public static function active(): string
    {
        $path = getenv('MATCH_RULES_FILE');
        $text = $path === false ? false : @file_get_contents($path);
        return match ($text === false ? null : trim($text)) {
            self::OPPOSITE_GENDER => self::OPPOSITE_GENDER,
            self::RATING_WINDOW => self::RATING_WINDOW,
            default => self::DEFAULT,
        };
    }

    /**
     * Where a partner of `$me` can be found: ['gender', G] (waiting players
     * of the same game with gender G) or ['rating'] (those whose rating is
     * within `window`). It must name every player `compatible` could accept.
     *
     * @return array{0:string,1?:string}
     */
    public static function search(string $rule, Player $me): array
    {
        return $rule === self::RATING_WINDOW ? ['rating'] : ['gender', $me->gender === 'm' ? 'f' : 'm'];
    }

    /**
     * The largest rating gap rating-window allows between two players who
     * have waited since `$aSince` and `$bSince`: 100 points, plus 50 per
     * second of the longer wait.
     */
    public static function window(int $aSince, int $bSince, int $nowMs): int
    {
        $waitedS = intdiv(max(0, $nowMs - min($aSince, $bSince)), 1000);
        return 100 + 50 * $waitedS;
    }

    /** Whether `$a` and `$b` may be matched at `$nowMs`. */
    public static function compatible(string $rule, Player $a, Player $b, int $nowMs): bool
    {
        if ($a->game !== $b->game) {
            return false;
        }
        return $rule === self::RATING_WINDOW
            ? abs($a->rating - $b->rating) <= self::window($a->since, $b->since, $nowMs)
            : $a->gender !== $b->gender;
    }
}
