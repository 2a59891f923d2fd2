<?php

// The pool's index, as examples/matchmaker/src/index.rs (the same lists in
// the same tables), so that finding a partner costs O(1) for
// opposite-gender and a bounded number of steps for rating-window,
// whatever the pool's size.
//
// Doubly linked lists threaded through the player rows (the prev/next and
// rprev/rnext columns hold uids, 0 for none), their ends in the shared
// table `pool` (head, tail):
//
//   pool["g:chess:m"]  head -> 17 <-> 4 <-> 230 <- tail   a (game, gender) queue
//   pool["r:chess:24"] head -> 4 <-> 230 <- tail          a (game, rating band) queue
//   pool["settled"]    head -> 9 <-> 12 <- tail           matched or timed out, still connected
//
// Every waiting player is in both its queues, each ordered by (since, uid),
// whatever rule is active, so a reload that switches the rule finds its
// index ready. The one rule: the player rows' state is the truth and the
// index only follows it. Everything here runs under the pool lock; a
// holder that dies half-way leaves the lists inconsistent, and the next
// holder rebuilds them from the states (`rebuild`) before reading them.
//
// Writes are posted (`setLater`, `deleteLater`): the server runs one
// worker's table requests in the order sent, so every later read sees them,
// a run of writes costs one round trip, and the lock's release (a
// compare-and-set, answered after them) waits for them and reports a
// refusal.

declare(strict_types=1);

namespace Matchmaker;

final class Index
{
    /** The genders players have (the handshake accepts no others). */
    public const GENDERS = ['m', 'f'];
    /** Width of a rating band: the window's own step (it widens by 50 points a second). */
    private const BAND_POINTS = 50;
    /** A rating search spanning more bands than this walks the game's gender queues instead. */
    private const BANDS_SCAN_MAX = 256;
    /** The settled list's key in `pool`. */
    private const SETTLED = 'settled';

    /** (game, gender) queues and the settled list. */
    private const ARRIVAL = ['prev', 'next'];
    /** (game, rating band) queues. */
    private const RATING = ['rprev', 'rnext'];

    /** @param array{0:string,1:string} $links @return array{0:int,1:int} */
    private static function linksOf(array $links, Player $p): array
    {
        return $links[0] === 'prev' ? [$p->prev, $p->next] : [$p->rprev, $p->rnext];
    }

    private static function genderKey(string $game, string $gender): string
    {
        return "g:{$game}:{$gender}";
    }

    private static function bandKey(string $game, int $band): string
    {
        return "r:{$game}:{$band}";
    }

    private static function band(int $rating): int
    {
        return intdiv($rating, self::BAND_POINTS) - ($rating % self::BAND_POINTS < 0 ? 1 : 0);
    }

    /** @return array{0:int,1:int} a list's (head, tail); (0, 0) when it is empty */
    private static function ends(PoolLock $lock, string $key): array
    {
        $row = $lock->index->get($key);
        return $row === null ? [0, 0] : [(int) $row['head'], (int) $row['tail']];
    }

    private static function setEnds(PoolLock $lock, string $key, int $head, int $tail): void
    {
        if ($head === 0) {
            $lock->index->deleteLater($key);
        } else {
            $lock->index->setLater($key, ['head' => $head, 'tail' => $tail]);
        }
    }

    private static function setLink(PoolLock $lock, int $uid, string $column, int $to): void
    {
        $lock->players->setLater((string) $uid, [$column => $to]);
    }

    /** Puts `$me` into list `$key` in (since, uid) order; the walk back from the tail is nearly always empty. */
    private static function insertBySince(PoolLock $lock, string $key, array $links, Player $me): void
    {
        [$head, $tail] = self::ends($lock, $key);
        $mine = [$me->since, $me->id()];
        [$after, $before] = [$tail, 0];
        while ($after !== 0) {
            $player = Pool::player($lock->players, $after);
            if ($player === null || [$player->since, $player->id()] <= $mine) {
                break;
            }
            $before = $after;
            $after = self::linksOf($links, $player)[0];
        }
        $lock->players->setLater($me->uid, [$links[0] => $after, $links[1] => $before]);
        if ($after !== 0) {
            self::setLink($lock, $after, $links[1], $me->id());
        }
        Fault::point('link', $me->id(), $lock->players->settle(...));
        if ($before !== 0) {
            self::setLink($lock, $before, $links[0], $me->id());
        }
        self::setEnds($lock, $key, $after === 0 ? $me->id() : $head, $before === 0 ? $me->id() : $tail);
    }

    /** Appends player `$uid` to list `$key`. */
    private static function append(PoolLock $lock, string $key, array $links, int $uid): void
    {
        [$head, $tail] = self::ends($lock, $key);
        $lock->players->setLater((string) $uid, [$links[0] => $tail, $links[1] => 0]);
        if ($tail !== 0) {
            self::setLink($lock, $tail, $links[1], $uid);
        }
        self::setEnds($lock, $key, $head === 0 ? $uid : $head, $uid);
    }

    /** Takes player `$uid` out of list `$key`, reading its pointers fresh. */
    private static function unlink(PoolLock $lock, string $key, array $links, int $uid): void
    {
        $player = Pool::player($lock->players, $uid);
        if ($player === null) {
            return;
        }
        [$prev, $next] = self::linksOf($links, $player);
        [$head, $tail] = self::ends($lock, $key);
        if ($prev !== 0) {
            self::setLink($lock, $prev, $links[1], $next);
        }
        if ($next !== 0) {
            self::setLink($lock, $next, $links[0], $prev);
        }
        self::setEnds($lock, $key, $head === $uid ? $next : $head, $tail === $uid ? $prev : $tail);
    }

    /** A player who became WAITING joins its queues. */
    public static function enter(PoolLock $lock, Player $me): void
    {
        self::insertBySince($lock, self::genderKey($me->game, $me->gender), self::ARRIVAL, $me);
        self::insertBySince($lock, self::bandKey($me->game, self::band($me->rating)), self::RATING, $me);
    }

    /** A waiting player leaves its queues (matched, timed out or gone). */
    public static function leaveQueues(PoolLock $lock, Player $player): void
    {
        self::unlink($lock, self::genderKey($player->game, $player->gender), self::ARRIVAL, $player->id());
        self::unlink($lock, self::bandKey($player->game, self::band($player->rating)), self::RATING, $player->id());
    }

    /** A finished player (matched or timed out) joins the settled list's end. */
    public static function settle(PoolLock $lock, int $uid): void
    {
        self::append($lock, self::SETTLED, self::ARRIVAL, $uid);
    }

    /** A finished player leaves the settled list. */
    public static function unsettle(PoolLock $lock, int $uid): void
    {
        self::unlink($lock, self::SETTLED, self::ARRIVAL, $uid);
    }

    /** The settled player whose result was sent longest ago. */
    public static function oldestSettled(PoolLock $lock): ?Player
    {
        [$head] = self::ends($lock, self::SETTLED);
        return $head === 0 ? null : Pool::player($lock->players, $head);
    }

    /** @return list<Player> every (game, gender) queue's longest-waiting player */
    public static function queueHeads(PoolLock $lock): array
    {
        $heads = [];
        foreach ($lock->index->iterate() as $key => $row) {
            if (str_starts_with((string) $key, 'g:')) {
                $player = Pool::player($lock->players, (int) $row['head']);
                if ($player !== null) {
                    $heads[] = $player;
                }
            }
        }
        return $heads;
    }

    /** @return list<int> every waiting player's uid, by walking the gender queues */
    public static function waitingUids(PoolLock $lock): array
    {
        $uids = [];
        foreach (self::queueHeads($lock) as $player) {
            while ($player !== null) {
                $uids[] = $player->id();
                $player = $player->next === 0 ? null : Pool::player($lock->players, $player->next);
            }
        }
        return $uids;
    }

    /** The first player of list `$key` that `$accept` takes, walking from the head until `$stop` says no later one can do better. */
    private static function first(PoolLock $lock, string $key, array $links, \Closure $stop, \Closure $accept): ?Player
    {
        [$uid] = self::ends($lock, $key);
        while ($uid !== 0) {
            $player = Pool::player($lock->players, $uid);
            if ($player === null || $stop($player)) {
                return null;
            }
            if ($accept($player)) {
                return $player;
            }
            $uid = self::linksOf($links, $player)[1];
        }
        return null;
    }

    /**
     * With the lock held: the longest-waiting player compatible with `$me`
     * (ties broken by the smaller uid). The caller records the match
     * (`settlePair`) before releasing the lock.
     */
    public static function claimPartner(PoolLock $lock, string $rule, Player $me, int $nowMs): ?Player
    {
        $accept = static fn (Player $p): bool => $p->uid !== $me->uid && $p->state === State::WAITING && Rules::compatible($rule, $me, $p, $nowMs);
        $older = static fn (Player $a, Player $b): bool => [$a->since, $a->id()] <= [$b->since, $b->id()];
        $search = Rules::search($rule, $me);
        if ($search[0] === 'gender') {
            return self::first($lock, self::genderKey($me->game, $search[1]), self::ARRIVAL, static fn (): bool => false, $accept);
        }
        // The widest window any partner can offer is that of the game's
        // longest-waiting player: bands beyond it hold nobody.
        $oldest = $me->since;
        foreach (self::GENDERS as $gender) {
            [$head] = self::ends($lock, self::genderKey($me->game, $gender));
            $player = $head === 0 ? null : Pool::player($lock->players, $head);
            if ($player !== null) {
                $oldest = min($oldest, $player->since);
            }
        }
        $reach = Rules::window($me->since, $oldest, $nowMs);
        [$low, $high] = [self::band($me->rating - $reach), self::band($me->rating + $reach)];
        $best = null;
        if ($high - $low > self::BANDS_SCAN_MAX) {
            foreach (self::GENDERS as $gender) {
                $stop = static function (Player $p) use (&$best, $older): bool {
                    return $best !== null && $older($best, $p);
                };
                $found = self::first($lock, self::genderKey($me->game, $gender), self::ARRIVAL, $stop, $accept);
                if ($found !== null) {
                    $best = $found;
                }
            }
            return $best;
        }
        for ($band = $low; $band <= $high; $band++) {
            [$firstRating, $lastRating] = [$band * self::BAND_POINTS, $band * self::BAND_POINTS + self::BAND_POINTS - 1];
            $gap = max($firstRating - $me->rating, $me->rating - $lastRating, 0);
            // A band is ordered by waiting time and the window only shrinks
            // along it: once it no longer reaches the band, or a player is
            // younger than the best so far, stop.
            $stop = static function (Player $p) use (&$best, $older, $me, $nowMs, $gap): bool {
                return ($best !== null && $older($best, $p)) || Rules::window($me->since, $p->since, $nowMs) < $gap;
            };
            $found = self::first($lock, self::bandKey($me->game, $band), self::RATING, $stop, $accept);
            if ($found !== null) {
                $best = $found;
            }
        }
        return $best;
    }

    /** The peer named in a `matched` result. */
    private static function peerOf(string $result): ?int
    {
        $decoded = json_decode($result, true);
        $uid = is_array($decoded) ? ($decoded['peer']['uid'] ?? null) : null;
        return is_int($uid) ? $uid : null;
    }

    /**
     * Rebuilds the index from the player rows, after taking the lock over
     * from a worker that died holding it. A pair the dead worker had half
     * settled (one row MATCHED, its peer's result already naming it, the
     * peer's state not yet written) is completed, and both results are
     * marked for re-sending. Returns how many players the index holds again.
     */
    public static function rebuild(PoolLock $lock): int
    {
        foreach (array_keys($lock->index->iterate()) as $key) {
            $lock->index->deleteLater((string) $key);
        }
        $players = Pool::players($lock->players);
        $position = [];
        foreach ($players as $n => $p) {
            $position[$p->id()] = $n;
        }
        foreach ($players as $n => $p) {
            if ($p->state !== State::MATCHED) {
                continue;
            }
            $peer = self::peerOf($p->result);
            $m = $peer === null ? null : ($position[$peer] ?? null);
            if ($m === null) {
                continue;
            }
            if ($players[$m]->state !== State::MATCHED && self::peerOf($players[$m]->result) === $p->id()) {
                foreach ([$n, $m] as $k) {
                    $lock->players->setLater($players[$k]->uid, ['changed' => 0, 'state' => State::MATCHED]);
                    $players[$k]->state = State::MATCHED;
                    $players[$k]->changed = 0;
                }
            }
        }
        $waiting = array_values(array_filter($players, static fn (Player $p): bool => $p->state === State::WAITING));
        usort($waiting, static fn (Player $a, Player $b): int => [$a->since, $a->id()] <=> [$b->since, $b->id()]);
        foreach ($waiting as $player) {
            self::append($lock, self::genderKey($player->game, $player->gender), self::ARRIVAL, $player->id());
            self::append($lock, self::bandKey($player->game, self::band($player->rating)), self::RATING, $player->id());
        }
        $settled = array_values(array_filter($players, static fn (Player $p): bool => $p->state === State::MATCHED || $p->state === State::DONE));
        usort($settled, static fn (Player $a, Player $b): int => [$a->changed, $a->id()] <=> [$b->changed, $b->id()]);
        foreach ($settled as $player) {
            self::settle($lock, $player->id());
        }
        return count($waiting) + count($settled);
    }
}
