<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\BodyReader;
use Hotsock\Internal\BodyWriter;
use Hotsock\Internal\Hello;
use Hotsock\Internal\Kind;
use Hotsock\Internal\Outbox;
use Hotsock\Internal\Scheduler;
use Hotsock\Internal\Wait;

/**
 * What a handler can do, as the Rust SDK's `Ctx`. Sends are queued and
 * written in one batch per loop turn, ahead of the acks of the events that
 * made them; they never block. Queries (`connInfo`, `connections`,
 * `members`, `channels`, `task`, a Reply's `wait`) and `sleep` suspend the
 * calling handler, and other connections' events run meanwhile.
 *
 * u64 values (connection ids, uids, epochs) are PHP ints holding the same
 * 64 bits: values of 2^63 and above appear negative.
 */
final class Ctx
{
    /** @param list<mixed> $tableFiles the shared tables' descriptors, received before Hello */
    public function __construct(
        private readonly Scheduler $scheduler,
        private readonly Outbox $out,
        private readonly Hello $hello,
        private readonly array $tableFiles,
    ) {
    }

    /** @var array<string, ?Table> tables by name, made on first use */
    private array $tables = [];

    /** This worker's slot (0-based). */
    public function slot(): int
    {
        return $this->hello->slot;
    }

    /** The code generation this worker belongs to. */
    public function generation(): int
    {
        return $this->hello->generation;
    }

    /** A task worker (`workers.task_count`) rather than an event worker. */
    public function isTaskWorker(): bool
    {
        return $this->hello->role === Hello::ROLE_TASK;
    }

    /** The shared tables Hello declared, by name, in order. */
    public function tableNames(): array
    {
        return array_map(static fn (array $t): string => $t['name'], $this->hello->tables);
    }

    /**
     * A shared table (`[tables.NAME]` in the config), or null if the config
     * declares none of that name. Its operations go through the server.
     */
    public function table(string $name): ?Table
    {
        if (!array_key_exists($name, $this->tables)) {
            $this->tables[$name] = null;
            foreach ($this->hello->tables as $index => $spec) {
                if ($spec['name'] === $name) {
                    $this->tables[$name] = new Table($this->scheduler, $this->out, $index, $name, $spec['rows'], $spec['columns']);
                }
            }
        }
        return $this->tables[$name];
    }

    /** A new lock for this worker's handlers (see `Mutex`). */
    public function mutex(): Mutex
    {
        return new Mutex($this->scheduler);
    }

    /**
     * Runs `$job` every `$ms` milliseconds, each run in its own fiber, from
     * the worker's Ready until its Stop (a run under way then finishes
     * first): the place for periodic work a Rust worker spawns a task for.
     * A run that throws is logged and the next one still comes; runs never
     * overlap (the next starts `$ms` after the previous ended).
     *
     * @param \Closure(): void $job
     */
    public function every(int $ms, \Closure $job): void
    {
        $this->scheduler->every(max(1, $ms) / 1000, $job);
    }

    /** Descriptors received for the shared tables (one per declared table). */
    public function tableFileCount(): int
    {
        return count($this->tableFiles);
    }

    /**
     * Sends a message to one connection; messages to one connection arrive in
     * the order pushed, and a connection that is gone drops them. Text must be
     * UTF-8 (the server kills a worker that sends anything else, so it is
     * checked here and refused with an exception the handler can see).
     */
    public function push(int $conn, string $data, bool $binary = false): void
    {
        $this->out->frame(Kind::PUSH, self::dataFlags($data, $binary), $conn, 0, $data);
    }

    /** Closes a connection with a WebSocket close code and reason, after everything pushed to it before. */
    public function close(int $conn, int $code = 1000, string $reason = ''): void
    {
        $this->out->frame(Kind::CLOSE_CONN, 0, $conn, 0, pack('v', $code) . self::utf8($reason));
    }

    /** Binds a connection to a numeric uid, for `sendToUid` and `dispatch = "uid"`. */
    public function bind(int $conn, int $uid): void
    {
        $this->out->frame(Kind::BIND, 0, $conn, $uid);
    }

    /** Sends a message to every connection bound to `$uid`. */
    public function sendToUid(int $uid, string $data, bool $binary = false): void
    {
        $this->out->frame(Kind::SEND_TO_UID, self::dataFlags($data, $binary), 0, $uid, $data);
    }

    /** Closes every connection bound to `$uid` (on every node of a cluster), after what was sent to it before. */
    public function closeUid(int $uid, int $code = 1000, string $reason = ''): void
    {
        $this->out->frame(Kind::CLOSE_UID, 0, 0, $uid, pack('v', $code) . self::utf8($reason));
    }

    /**
     * Where `$uid` is connected: one entry per node (`local` on a single server).
     *
     * @return list<PresenceEntry>
     * @throws ChannelError with CLUSTER_UNAVAILABLE while the cluster's Redis cannot be reached
     */
    public function presence(int $uid): array
    {
        [$refused, $body] = $this->query(Kind::PRESENCE, $uid, '');
        if ($refused) {
            throw ChannelError::decode($body);
        }
        return PresenceEntry::decodeList($body);
    }

    /** Sends a message to every open connection. */
    public function broadcast(string $data, bool $binary = false): void
    {
        $this->out->frame(Kind::BROADCAST, self::dataFlags($data, $binary), 0, 0, $data);
    }

    /** Details of an open connection; null if it is not open. */
    public function connInfo(int $conn): ?ConnInfo
    {
        [$notFound, $body] = $this->query(Kind::CONN_INFO, $conn, '');
        return $notFound ? null : ConnInfo::decode($body);
    }

    /** @return list<int> ids of all open connections, ascending */
    public function connections(): array
    {
        [, $body] = $this->query(Kind::CONN_LIST, 0, '');
        return strlen($body) === 0 ? [] : array_values(unpack('P*', $body));
    }

    /**
     * Hands `$payload` to a task worker; returns once the server accepted it.
     *
     * @throws TaskRefused when the queue is full or there are no task workers
     */
    public function task(string $payload): TaskHandle
    {
        $request = $this->scheduler->nextRequest();
        $this->scheduler->expect($request, null, task: true);
        $this->out->frame(Kind::DISPATCH_TASK, 0, 0, $request, $payload);
        $this->scheduler->wait(Wait::reply($request));
        [$refused, $body] = $this->scheduler->takeReply($request);
        if ($refused) {
            throw new TaskRefused($body);
        }
        if (strlen($body) !== 8) {
            throw new ProtocolError('task reply is not a u64 task id');
        }
        return new TaskHandle($this->scheduler, unpack('P', $body)[1]);
    }

    /**
     * Adds a connection to a channel: it gets every publication from now on,
     * in offset order. Membership lives in the server and survives reloads
     * and crashes. The request is sent at once.
     *
     * @return Reply<Subscribed>
     */
    public function subscribe(int $conn, string $channel): Reply
    {
        return $this->subscribeRequest($conn, $channel, null);
    }

    /**
     * Like `subscribe`, for a client that saw the channel up to `$since`: the
     * server replays what came after, or says `recovered = false` (then send
     * the client a full state).
     *
     * @return Reply<Subscribed>
     */
    public function subscribeFrom(int $conn, string $channel, Position $since): Reply
    {
        return $this->subscribeRequest($conn, $channel, $since);
    }

    /** Removes a connection from a channel (nothing happens if it is not in it). */
    public function unsubscribe(int $conn, string $channel): void
    {
        $this->out->frame(Kind::UNSUBSCRIBE, 0, $conn, 0, self::utf8($channel));
    }

    /**
     * Sends `$data` to every member of `$channel` with the channel's next offset.
     *
     * @return Reply<Position>
     */
    public function publish(string $channel, string $data, bool $binary = false): Reply
    {
        return $this->publishRequest($channel, $data, $binary, null);
    }

    /**
     * `publish` to every member but `$except` (typically the sender).
     *
     * @return Reply<Position>
     */
    public function publishExcept(string $channel, string $data, int $except, bool $binary = false): Reply
    {
        return $this->publishRequest($channel, $data, $binary, $except);
    }

    /** @return list<Member> the members of a channel, ascending by connection; empty for an unknown channel */
    public function members(string $channel): array
    {
        [, $body] = $this->query(Kind::MEMBERS, 0, self::utf8($channel));
        return Member::decodeList($body);
    }

    /**
     * @return list<string> the channels a connection is in
     * @throws ChannelError when the connection does not exist
     */
    public function channels(int $conn): array
    {
        [$refused, $body] = $this->query(Kind::CONN_CHANNELS, $conn, '');
        if ($refused) {
            throw ChannelError::decode($body);
        }
        $r = new BodyReader($body, 'channel name list');
        $names = [];
        while (!$r->done()) {
            $names[] = $r->string();
        }
        return $names;
    }

    /**
     * Waits `$ms` milliseconds without holding the loop: other connections'
     * events run and heartbeats are answered meanwhile (PHP's own `usleep`
     * would block the worker, and the server would take it for hung).
     */
    public function sleep(int $ms): void
    {
        $this->scheduler->wait(Wait::until(Wait::now() + max(0, $ms) / 1000));
    }

    private function subscribeRequest(int $conn, string $channel, ?Position $from): Reply
    {
        $request = $this->scheduler->nextRequest();
        $body = BodyWriter::bytes(self::utf8($channel));
        $flags = 0;
        if ($from !== null) {
            $body .= pack('PP', $from->epoch, $from->offset);
            $flags = Kind::FROM;
        }
        $reply = new Reply($this->scheduler, $request, static fn (string $b): Subscribed => Subscribed::decode($b));
        $this->out->frame(Kind::SUBSCRIBE, $flags, $conn, $request, $body);
        return $reply;
    }

    private function publishRequest(string $channel, string $data, bool $binary, ?int $except): Reply
    {
        $request = $this->scheduler->nextRequest();
        $flags = self::dataFlags($data, $binary) | ($except === null ? 0 : Kind::EXCEPT);
        $reply = new Reply($this->scheduler, $request, static fn (string $b): Position => Position::decode($b));
        $this->out->frame(Kind::PUBLISH, $flags, $except ?? 0, $request, BodyWriter::bytes(self::utf8($channel)) . $data);
        return $reply;
    }

    /** @return array{0:bool,1:string} */
    private function query(int $kind, int $conn, string $payload): array
    {
        $request = $this->scheduler->nextRequest();
        $this->scheduler->expect($request);
        $this->out->frame($kind, 0, $conn, $request, $payload);
        $this->scheduler->wait(Wait::reply($request));
        return $this->scheduler->takeReply($request);
    }

    private static function dataFlags(string $data, bool $binary): int
    {
        if ($binary) {
            return Kind::BINARY;
        }
        self::utf8($data);
        return 0;
    }

    private static function utf8(string $text): string
    {
        if (preg_match('//u', $text) !== 1) {
            throw new \InvalidArgumentException('text is not UTF-8 (send it as binary: pass $binary = true)');
        }
        return $text;
    }
}
