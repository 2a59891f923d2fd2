<?php

// The waiting pool, in the shared table `players` (key: the uid), so a
// reload or a worker crash loses no waiting player; `Index.php` keeps the
// pool's index beside it, in the shared table `pool`. As
// examples/matchmaker/src/pool.rs, on the same tables: a Rust and a PHP
// matchmaker could serve one pool.
//
// Every change of a player's state, and of the index, happens under the
// pool lock: a table row (`~lock`) whose `conn` column holds the pid of the
// worker holding it, taken with compare-and-set and taken over if that
// process died. A holder may die in the middle of an update: whoever takes
// the lock over rebuilds the index from the player rows (`Index::rebuild`),
// which are the truth.

declare(strict_types=1);

namespace Matchmaker;

use Hotsock\Ctx;
use Hotsock\Mutex;
use Hotsock\Table;

/** A player's state in the pool. */
final class State
{
    public const RESERVED = 0; // handshake accepted, connection not open yet
    public const WAITING = 1;
    public const MATCHED = 2;
    public const DONE = 3; // timed out or left
}

/** A row of the pool. */
final class Player
{
    public function __construct(
        public string $uid,
        public int $state,
        public int $conn,
        public int $since,
        public int $rating,
        public string $gender,
        public string $game,
        public string $name,
        /** The message sent when it finished (matched or timeout). */
        public string $result,
        /** When the state last changed, or the result was last sent. */
        public int $changed,
        /** Neighbours (uids, 0 for none) in its (game, gender) queue while waiting, the settled list after. */
        public int $prev,
        public int $next,
        /** Neighbours in its (game, rating band) queue while waiting. */
        public int $rprev,
        public int $rnext,
    ) {
    }

    /** @param array<string, int|float|string> $row */
    public static function fromRow(string $uid, array $row): self
    {
        return new self(
            $uid,
            (int) ($row['state'] ?? State::DONE),
            (int) ($row['conn'] ?? 0),
            (int) ($row['since'] ?? 0),
            (int) ($row['rating'] ?? 0),
            (string) ($row['gender'] ?? ''),
            (string) ($row['game'] ?? ''),
            (string) ($row['name'] ?? ''),
            (string) ($row['result'] ?? ''),
            (int) ($row['changed'] ?? 0),
            (int) ($row['prev'] ?? 0),
            (int) ($row['next'] ?? 0),
            (int) ($row['rprev'] ?? 0),
            (int) ($row['rnext'] ?? 0),
        );
    }

    /** The uid as the index stores it (player keys are positive integers). */
    public function id(): int
    {
        return ctype_digit($this->uid) ? (int) $this->uid : 0;
    }

    /** @return array<string, int|string> */
    public function toJson(): array
    {
        return ['uid' => $this->id(), 'name' => $this->name, 'gender' => $this->gender, 'game' => $this->game, 'rating' => $this->rating];
    }
}

/** Holds the pool lock until `release()`. `players` and `index` are the two tables it guards. */
final class PoolLock
{
    private bool $held = true;

    public function __construct(
        public readonly Table $players,
        public readonly Table $index,
        private readonly int $pid,
        private readonly Mutex $local,
    ) {
    }

    /** Releases the lock row, then lets this worker's next waiting handler try for it. */
    public function release(): void
    {
        if (!$this->held) {
            return;
        }
        $this->held = false;
        try {
            // The writes posted under the lock ran before this; a refusal
            // among them is thrown, as the Rust worker's `?` returns it.
            $this->players->settle();
            $this->index->settle();
        } finally {
            try {
                $this->players->compareAndSet(Pool::LOCK_KEY, 'conn', $this->pid, 0);
            } catch (\Throwable) {
                // The row stays ours until this process dies; the next holder takes it over.
            } finally {
                $this->local->unlock();
            }
        }
    }
}

final class Pool
{
    /** The lock row's key; player keys are uids, so never start with `~`. */
    public const LOCK_KEY = '~lock';
    /** How long a worker waits before trying a held lock again (ms; other handlers run meanwhile). */
    private const LOCK_RETRY_MS = 1;

    /**
     * This worker's handlers queue here before one of them tries the lock
     * row: each try is a request to the server, and a hundred handlers
     * polling the row at once would starve the holder's own requests.
     */
    private static ?Mutex $local = null;

    /** Reads player `$uid` (an index pointer), if its row exists. */
    public static function player(Table $table, int $uid): ?Player
    {
        $key = (string) $uid;
        $row = $table->get($key);
        return $row === null ? null : Player::fromRow($key, $row);
    }

    /** Creates the lock row (every worker tries; one succeeds). */
    public static function init(Table $table): void
    {
        $table->insert(self::LOCK_KEY, ['state' => State::DONE, 'conn' => 0]);
    }

    /**
     * Takes the pool lock, taking it over from a holder that died; after a
     * takeover the index is rebuilt before anything reads it, since the
     * dead holder may have left it half-updated.
     */
    public static function lock(Ctx $ctx, Table $players, Table $index): PoolLock
    {
        $pid = getmypid();
        $local = self::$local ??= $ctx->mutex();
        $local->lock();
        while (true) {
            try {
                if ($players->compareAndSet(self::LOCK_KEY, 'conn', 0, $pid)) {
                    return new PoolLock($players, $index, $pid, $local);
                }
                $holder = (int) ($players->get(self::LOCK_KEY)['conn'] ?? 0);
                $takeover = $holder !== 0 && !self::alive($holder) && $players->compareAndSet(self::LOCK_KEY, 'conn', $holder, $pid);
            } catch (\Throwable $error) {
                $local->unlock();
                throw $error;
            }
            if ($takeover) {
                $lock = new PoolLock($players, $index, $pid, $local);
                try {
                    $repaired = Index::rebuild($lock);
                } catch (\Throwable $error) {
                    $lock->release();
                    throw $error;
                }
                fwrite(STDERR, "matchmaker: took the pool lock over from dead worker {$holder}; index rebuilt ({$repaired} players)\n");
                return $lock;
            }
            $ctx->sleep(self::LOCK_RETRY_MS);
        }
    }

    /** Whether process `$pid` exists (a worker that died is reaped by the server). */
    private static function alive(int $pid): bool
    {
        if (function_exists('posix_kill')) {
            // EPERM (1): it exists, under another user.
            return posix_kill($pid, 0) || posix_get_last_error() === 1;
        }
        return file_exists("/proc/{$pid}");
    }

    /**
     * Every player row, skipping the lock row (a full scan: only for rare
     * paths, never per arrival).
     *
     * @return list<Player>
     */
    public static function players(Table $table): array
    {
        $players = [];
        foreach ($table->iterate() as $key => $row) {
            $key = (string) $key;
            if (!str_starts_with($key, '~')) {
                $players[] = Player::fromRow($key, $row);
            }
        }
        return $players;
    }
}
