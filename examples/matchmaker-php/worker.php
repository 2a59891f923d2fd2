<?php

// hotsock's flagship example in PHP, behaving exactly like
// examples/matchmaker (Rust): the same URL, parameters, token, messages,
// close codes, rules, timeouts, and the same shared tables. Players connect
// to `/match` with a token their game backend issued; the handshake
// authenticates them; they wait in a pool kept in the shared table
// `players` (so reloads and worker crashes lose nobody); when a compatible
// player is there (the rule lives in src/Rules.php, the code to
// hot-update), both get {"type":"matched",...} and are closed with 1000. A
// player waiting longer than MATCH_TIMEOUT_MS gets {"type":"timeout"}; one
// who enters the pool without a partner first gets {"type":"waiting"}.
//
// Environment: MATCH_SECRET (the HMAC key shared with the game backend;
// unset, a development secret is used with a warning), MATCH_TIMEOUT_MS
// (default 30000), MATCH_RULES_FILE (optional: `opposite-gender` or
// `rating-window`, read at worker start).
//
// `php worker.php token UID` prints the token a backend would issue.

declare(strict_types=1);

require __DIR__ . '/../../sdk/php/autoload.php';
require __DIR__ . '/src/Auth.php';
require __DIR__ . '/src/Fault.php';
require __DIR__ . '/src/Index.php';
require __DIR__ . '/src/Pool.php';
require __DIR__ . '/src/Rules.php';

use Hotsock\BaseApp;
use Hotsock\Close;
use Hotsock\Ctx;
use Hotsock\Decision;
use Hotsock\Handshake;
use Hotsock\Open;
use Hotsock\Runtime;
use Hotsock\Table;
use Hotsock\TableError;
use Matchmaker\Auth;
use Matchmaker\Index;
use Matchmaker\Params;
use Matchmaker\Player;
use Matchmaker\Pool;
use Matchmaker\PoolLock;
use Matchmaker\Rules;
use Matchmaker\State;

/** A message to send once the pool lock is released: the player's result, then a close. */
final class Delivery
{
    public function __construct(public readonly int $conn, public readonly string $message, public readonly string $reason)
    {
    }

    public function send(Ctx $ctx): void
    {
        $ctx->push($this->conn, $this->message);
        $ctx->close($this->conn, 1000, $this->reason);
    }

    public static function of(Player $player): self
    {
        $reason = $player->state === State::MATCHED ? 'matched' : 'no match in time';
        return new self($player->conn, $player->result, $reason);
    }
}

final class Matchmaker extends BaseApp
{
    public const HANDLES_HANDSHAKE = true;

    /** The secret used when MATCH_SECRET is unset; the page's default matches it. Never for production. */
    public const DEV_SECRET = 'dev-secret';
    /** How often each worker looks for timed-out players and for pairs a time-widening rule now allows. */
    private const JANITOR_EVERY_MS = 200;
    /** A result still not followed by its connection's close after this is sent again. */
    private const RESEND_AFTER_MS = 1_000;
    /** A handshake that never became an open connection is forgotten after this. */
    private const RESERVED_MAX_MS = 120_000;
    /** Reservations are looked for by a full scan, without the lock, only every this many janitor passes (5 s). */
    private const RESERVED_SWEEP_EVERY = 25;

    private string $rules;
    private int $pass = 0;
    /** @var array<int, string> connection => uid, for onClose (the server forgets the binding before the Close event) */
    private array $uids = [];

    public function __construct(private readonly string $secret, private readonly int $timeoutMs)
    {
        $this->rules = Rules::active();
    }

    private static function nowMs(): int
    {
        return (int) (microtime(true) * 1000);
    }

    /** @return array{0:Table,1:Table} the pool (`players`) and its index (`pool`) */
    private static function tables(Ctx $ctx): array
    {
        $players = $ctx->table('players') ?? throw new RuntimeException('the config declares no [tables.players]');
        $index = $ctx->table('pool') ?? throw new RuntimeException('the config declares no [tables.pool]');
        return [$players, $index];
    }

    public function onWorkerStart(Ctx $ctx, ?string $handoff): void
    {
        [$players] = self::tables($ctx);
        Pool::init($players);
        $ctx->every(self::JANITOR_EVERY_MS, function () use ($ctx): void {
            $this->pass++;
            foreach ($this->janitor($ctx, $this->pass) as $delivery) {
                $delivery->send($ctx);
            }
        });
    }

    /**
     * With the lock held: records the match in both rows (conn, result, then
     * state) and in the index, and returns what to send. Every result is
     * written before any state, so a worker dying half-way leaves at most
     * one MATCHED row whose peer's result already names it, which the index
     * rebuild completes.
     *
     * @return list<Delivery>
     */
    private function settlePair(PoolLock $lock, Player $a, Player $b, int $now): array
    {
        $table = $lock->players;
        [$low, $high] = strcmp($a->uid, $b->uid) <= 0 ? [$a, $b] : [$b, $a];
        $room = "room-{$low->uid}-{$high->uid}";
        $deliveries = [];
        foreach ([[$a, $b], [$b, $a]] as [$me, $peer]) {
            $message = json_encode(['type' => 'matched', 'peer' => $peer->toJson(), 'room' => $room, 'rules' => $this->rules], JSON_THROW_ON_ERROR | JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES);
            $table->setLater($me->uid, ['conn' => $me->conn, 'result' => $message, 'changed' => $now]);
            $deliveries[] = new Delivery($me->conn, $message, 'matched');
        }
        foreach ([$a, $b] as $player) {
            if ($player->state === State::WAITING) {
                Index::leaveQueues($lock, $player);
            }
        }
        $table->setLater($a->uid, ['state' => State::MATCHED]);
        \Matchmaker\Fault::point('settle', $a->id(), $table->settle(...));
        $table->setLater($b->uid, ['state' => State::MATCHED]);
        Index::settle($lock, $a->id());
        Index::settle($lock, $b->id());
        return $deliveries;
    }

    private function arrive(Ctx $ctx, string $uid, int $conn): void
    {
        [$players, $index] = self::tables($ctx);
        $lock = Pool::lock($ctx, $players, $index);
        $deliveries = [];
        try {
            $row = $players->get($uid);
            if ($row === null) {
                // Never silent: a player without a reservation is told so.
                $lock->release();
                $lock = null;
                $ctx->push($conn, json_encode(['type' => 'error', 'message' => 'no reservation for this player; reconnect'], JSON_THROW_ON_ERROR));
                $ctx->close($conn, 1011, 'no reservation');
                return;
            }
            $me = Player::fromRow($uid, $row);
            $me->conn = $conn;
            if ($me->state === State::RESERVED) {
                $now = self::nowMs();
                $partner = Index::claimPartner($lock, $this->rules, $me, $now);
                if ($partner !== null) {
                    $deliveries = $this->settlePair($lock, $me, $partner, $now);
                } else {
                    // The state first: if this worker dies while linking,
                    // the rebuild finds a waiting player to put back.
                    $players->setLater($uid, ['conn' => $conn, 'state' => State::WAITING]);
                    $me->state = State::WAITING;
                    Index::enter($lock, $me);
                    $lock->release();
                    $lock = null;
                    // In the pool: tell the player (not a result, so no close).
                    $ctx->push($conn, json_encode(['type' => 'waiting', 'rules' => $this->rules], JSON_THROW_ON_ERROR));
                    return;
                }
            } elseif ($me->state === State::MATCHED || $me->state === State::DONE) {
                // A redelivered Open (the worker that first ran it was
                // killed): send the result again; the first may have died with it.
                $deliveries = [Delivery::of($me)];
            }
        } finally {
            $lock?->release();
        }
        foreach ($deliveries as $delivery) {
            $delivery->send($ctx);
        }
    }

    /**
     * Times players out, retries pairs (for rules that widen with waiting
     * time), and re-sends results whose connection is still open after a
     * second. Each part walks the index from its oldest end and stops at the
     * first player with nothing due.
     *
     * @return list<Delivery>
     */
    private function janitor(Ctx $ctx, int $pass): array
    {
        [$table, $index] = self::tables($ctx);
        if ($pass % self::RESERVED_SWEEP_EVERY === 0) {
            $this->forgetStaleReservations($ctx);
        }
        $lock = Pool::lock($ctx, $table, $index);
        $deliveries = [];
        try {
            $now = self::nowMs();
            foreach (Index::queueHeads($lock) as $player) {
                while ($player !== null) {
                    $waited = $now - $player->since;
                    if ($player->state !== State::WAITING || $waited < $this->timeoutMs) {
                        break;
                    }
                    $message = json_encode(['type' => 'timeout', 'waited_ms' => $waited], JSON_THROW_ON_ERROR);
                    $table->setLater($player->uid, ['result' => $message, 'changed' => $now]);
                    Index::leaveQueues($lock, $player);
                    $table->setLater($player->uid, ['state' => State::DONE]);
                    Index::settle($lock, $player->id());
                    $deliveries[] = new Delivery($player->conn, $message, 'no match in time');
                    $player = $player->next === 0 ? null : Pool::player($table, $player->next);
                }
            }
            if ($this->rules === Rules::RATING_WINDOW) {
                foreach (Index::waitingUids($lock) as $uid) {
                    // Read again: this pass may have matched it already.
                    $player = Pool::player($table, $uid);
                    if ($player === null || $player->state !== State::WAITING) {
                        continue;
                    }
                    $partner = Index::claimPartner($lock, $this->rules, $player, $now);
                    if ($partner !== null) {
                        array_push($deliveries, ...$this->settlePair($lock, $player, $partner, $now));
                    }
                }
            }
            while (($player = Index::oldestSettled($lock)) !== null) {
                if ($now - $player->changed < self::RESEND_AFTER_MS) {
                    break;
                }
                $table->setLater($player->uid, ['changed' => $now]);
                Index::unsettle($lock, $player->id());
                Index::settle($lock, $player->id());
                $deliveries[] = Delivery::of($player);
            }
        } finally {
            $lock->release();
        }
        return $deliveries;
    }

    /** Deletes reservations whose connection never opened: found by a scan without the lock, each checked again under it. */
    private function forgetStaleReservations(Ctx $ctx): void
    {
        [$table, $index] = self::tables($ctx);
        $now = self::nowMs();
        $stale = [];
        foreach (Pool::players($table) as $p) {
            if ($p->state === State::RESERVED && $now - $p->since >= self::RESERVED_MAX_MS) {
                $stale[] = $p->uid;
            }
        }
        if ($stale === []) {
            return;
        }
        $lock = Pool::lock($ctx, $table, $index);
        try {
            foreach ($stale as $uid) {
                $row = $table->get($uid);
                if ($row !== null && $row['state'] === State::RESERVED) {
                    $table->delete($uid);
                }
            }
        } finally {
            $lock->release();
        }
    }

    public function onHandshake(Ctx $ctx, Handshake $handshake): Decision
    {
        $request = $handshake->request;
        if (explode('?', $request->path, 2)[0] !== '/match') {
            return Decision::reject(404, "connect to /match?uid=..&gender=m|f&game=..&token=..\n");
        }
        $params = Params::parse($request);
        if (is_string($params)) {
            return Decision::reject(400, "{$params}\n");
        }
        if (!Auth::valid($this->secret, $params->uid, $request->query('token'))) {
            return Decision::reject(401, "missing or bad token\n");
        }
        $table = $ctx->table('players');
        if ($table === null) {
            return Decision::reject(500, "no players table\n");
        }
        $row = [
            'state' => State::RESERVED,
            'conn' => $handshake->conn,
            'since' => self::nowMs(),
            'rating' => $params->rating,
            'gender' => $params->gender,
            'game' => $params->game,
            'name' => $params->name,
        ];
        try {
            if ($table->insert((string) $params->uid, $row)) {
                return Decision::accept()->bind($params->uid);
            }
            // A redelivered handshake finds its own reservation.
            return $handshake->redelivered
                ? Decision::accept()->bind($params->uid)
                : Decision::reject(409, "this uid is already connected\n");
        } catch (TableError $error) {
            return $error->getCode() === TableError::TABLE_FULL
                ? Decision::reject(503, "matchmaking is full, retry later\n")
                : Decision::reject(500, "{$error->getMessage()}\n");
        }
    }

    public function onOpen(Ctx $ctx, Open $open): void
    {
        $info = $ctx->connInfo($open->conn);
        if ($info === null || $info->uid === null) {
            return;
        }
        $uid = (string) $info->uid;
        $this->uids[$open->conn] = $uid;
        try {
            $this->arrive($ctx, $uid, $open->conn);
        } catch (TableError $error) {
            $ctx->push($open->conn, json_encode(['type' => 'error', 'message' => $error->getMessage()], JSON_THROW_ON_ERROR));
            $ctx->close($open->conn, 1011, 'matchmaking error');
        }
    }

    public function onClose(Ctx $ctx, Close $close): void
    {
        [$table, $index] = self::tables($ctx);
        $uid = $this->uids[$close->conn] ?? null;
        unset($this->uids[$close->conn]);
        // Another worker (before a reload) may have seen the open: find the
        // player by connection then.
        if ($uid === null) {
            foreach (Pool::players($table) as $p) {
                if ($p->conn === $close->conn) {
                    $uid = $p->uid;
                    break;
                }
            }
        }
        if ($uid === null) {
            return;
        }
        $lock = Pool::lock($ctx, $table, $index);
        try {
            // The connection is gone, whatever the state: a waiting player
            // leaves the pool at once, a finished one's result is no longer
            // needed. This is the only place rows of open players are deleted.
            $row = $table->get($uid);
            if ($row !== null && $row['conn'] === $close->conn) {
                $player = Player::fromRow($uid, $row);
                if ($player->state === State::WAITING) {
                    Index::leaveQueues($lock, $player);
                } elseif ($player->state === State::MATCHED || $player->state === State::DONE) {
                    Index::unsettle($lock, $player->id());
                }
                $table->delete($uid);
            }
        } catch (TableError $error) {
            fwrite(STDERR, "matchmaker: removing player {$uid}: {$error->getMessage()}\n");
        } finally {
            $lock->release();
        }
    }
}

if (($argv[1] ?? null) === 'token') {
    $uid = $argv[2] ?? '';
    if (!ctype_digit($uid)) {
        fwrite(STDERR, "usage: [MATCH_SECRET=...] php worker.php token UID\n");
        exit(2);
    }
    $secret = getenv('MATCH_SECRET');
    echo Auth::token($secret === false ? Matchmaker::DEV_SECRET : $secret, (int) $uid), "\n";
    exit(0);
}

$secret = getenv('MATCH_SECRET');
if ($secret === false) {
    fwrite(STDERR, 'matchmaker: MATCH_SECRET is not set; using the development secret "' . Matchmaker::DEV_SECRET
        . "\". Anyone can sign tokens with it: set MATCH_SECRET in production.\n");
    $secret = Matchmaker::DEV_SECRET;
}
$timeout = getenv('MATCH_TIMEOUT_MS');
$timeoutMs = $timeout !== false && ctype_digit($timeout) ? (int) $timeout : 30_000;
Runtime::run(new Matchmaker($secret, $timeoutMs));
