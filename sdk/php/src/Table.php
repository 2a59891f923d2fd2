<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\BodyReader;
use Hotsock\Internal\BodyWriter;
use Hotsock\Internal\Kind;
use Hotsock\Internal\Outbox;
use Hotsock\Internal\Scheduler;
use Hotsock\Internal\Wait;

/**
 * A shared table (`[tables.NAME]`): the same rows every worker sees, Rust or
 * PHP, surviving reloads and crashes. PHP cannot do the table's atomic
 * compare-and-swap on the mapped segment, so every operation is a request
 * the server runs on its own mapping (docs/protocol.md, "Tables through
 * the server"), with the same atomicity as the Rust SDK's direct access:
 * `insert` of one key by two workers at once succeeds for exactly one,
 * `incr` never loses an increment, `compareAndSet` claims a row.
 *
 * Each call waits for the server's answer (about one socket round trip);
 * other connections' handlers run meanwhile. Values are typed as the
 * columns: PHP ints for `i64`, floats for `f64` (an int is refused, as the
 * Rust SDK refuses `Value::Int`), strings for `str:N`. A row reads as an
 * array of column => value, in declared column order.
 *
 * @throws TableError from every operation, as the Rust SDK's `TableError`
 */
final class Table
{
    private const TAG_INT = 1;
    private const TAG_FLOAT = 2;
    private const TAG_STR = 3;

    /** @param list<array{0:string,1:string}> $columns (name, type) as Hello declares them */
    public function __construct(
        private readonly Scheduler $scheduler,
        private readonly Outbox $out,
        private readonly int $index,
        public readonly string $name,
        public readonly int $capacity,
        public readonly array $columns,
    ) {
        // A handler that posted writes and ended without settling them
        // leaves nobody to read their answers: let go of them (a refusal
        // among them is logged), or they would pile up for the worker's life.
        $scheduler->onJobEnd(function (int $job): void {
            foreach ($this->posted[$job] ?? [] as $request) {
                $this->scheduler->orphan($request, "table {$this->name}");
            }
            unset($this->posted[$job]);
        });
    }

    /** @return array<string, int|float|string>|null the row, or null if the key has none */
    public function get(string $key): ?array
    {
        $r = new BodyReader($this->request(Kind::TABLE_GET, BodyWriter::bytes($key)), 'TableGet reply');
        return $r->u8() === 0 ? null : self::readValues($r);
    }

    /** Sets columns of a row, creating it (other columns 0 or '') if the key is new. */
    public function set(string $key, array $values): void
    {
        $this->request(Kind::TABLE_SET, BodyWriter::bytes($key) . self::values($values));
    }

    /**
     * `set`, sent without waiting for the answer: a worker's table requests
     * run in the order it sent them, so every later operation sees it, and
     * a run of writes costs one round trip instead of one each. A refusal
     * is thrown by this handler's next waiting operation on this table, or
     * by `settle()`.
     */
    public function setLater(string $key, array $values): void
    {
        $this->post(Kind::TABLE_SET, BodyWriter::bytes($key) . self::values($values));
    }

    /** `delete`, sent without waiting (see `setLater`). */
    public function deleteLater(string $key): void
    {
        $this->post(Kind::TABLE_DELETE, BodyWriter::bytes($key));
    }

    /** Waits until this handler's `setLater`/`deleteLater` writes ran; throws the first refusal among them. */
    public function settle(): void
    {
        $posted = $this->posted[$this->scheduler->job()] ?? [];
        if ($posted !== []) {
            $this->scheduler->wait(Wait::reply($posted[array_key_last($posted)]));
            $this->check();
        }
    }

    /** Creates the row if the key is new; false (writing nothing) if it exists. */
    public function insert(string $key, array $values): bool
    {
        return $this->request(Kind::TABLE_INSERT, BodyWriter::bytes($key) . self::values($values)) === "\x01";
    }

    /** Adds `$delta` to an `i64` column (creating the row at 0); returns the new value. */
    public function incr(string $key, string $column, int $delta = 1): int
    {
        $body = $this->request(Kind::TABLE_INCR, BodyWriter::bytes($key) . BodyWriter::bytes($column) . pack('P', $delta));
        // 'P' is little-endian like every integer on the wire ('q' is the
        // host's order); PHP's 64-bit ints read its bits as signed.
        return unpack('P', self::exactly(8, $body))[1];
    }

    /** Adds `$delta` to an `f64` column (creating the row at 0.0); returns the new value. */
    public function incrFloat(string $key, string $column, float $delta): float
    {
        $body = $this->request(Kind::TABLE_INCR_FLOAT, BodyWriter::bytes($key) . BodyWriter::bytes($column) . pack('e', $delta));
        return unpack('e', self::exactly(8, $body))[1];
    }

    /** Sets `$column` to `$new` if it holds `$expected`; creates no row. Returns whether it was set. */
    public function compareAndSet(string $key, string $column, int|float|string $expected, int|float|string $new): bool
    {
        $body = BodyWriter::bytes($key) . BodyWriter::bytes($column) . self::value($expected) . self::value($new);
        return $this->request(Kind::TABLE_COMPARE_AND_SET, $body) === "\x01";
    }

    /** Deletes a row; returns whether it existed. */
    public function delete(string $key): bool
    {
        return $this->request(Kind::TABLE_DELETE, BodyWriter::bytes($key)) === "\x01";
    }

    /**
     * A copy of every live row, each consistent on its own (a full scan:
     * keep it off paths that run per message).
     *
     * @return array<string, array<string, int|float|string>> key => row
     */
    public function iterate(): array
    {
        $r = new BodyReader($this->request(Kind::TABLE_ITERATE, ''), 'TableIterate reply');
        $rows = [];
        for ($n = $r->u32(); $n > 0; $n--) {
            $key = $r->string();
            $rows[$key] = self::readValues($r);
        }
        return $rows;
    }

    /** Sends one request and waits for its Reply; a refusal is thrown. */
    private function request(int $kind, string $body): string
    {
        $request = $this->scheduler->nextRequest();
        $this->scheduler->expect($request);
        $this->out->frame($kind, 0, 0, $request, pack('v', $this->index) . $body);
        $this->scheduler->wait(Wait::reply($request));
        // Answered in order: this handler's earlier posted writes are in too.
        $this->check();
        [$refused, $reply] = $this->scheduler->takeReply($request);
        if ($refused) {
            throw TableError::decode($reply);
        }
        return $reply;
    }

    /**
     * Posted requests not yet checked, by handler: the scheduler's job
     * number, 0 outside one (not the fiber: fibers are pooled, and one runs
     * many handlers one after another).
     *
     * @var array<int, list<int>>
     */
    private array $posted = [];

    private function post(int $kind, string $body): void
    {
        $request = $this->scheduler->nextRequest();
        $this->scheduler->expect($request);
        $this->out->frame($kind, 0, 0, $request, pack('v', $this->index) . $body);
        $this->posted[$this->scheduler->job()][] = $request;
    }

    /** Takes the answers to this handler's posted writes (all arrived); throws the first refusal. */
    private function check(): void
    {
        $handler = $this->scheduler->job();
        $posted = $this->posted[$handler] ?? [];
        unset($this->posted[$handler]);
        $first = null;
        foreach ($posted as $request) {
            [$refused, $reply] = $this->scheduler->takeReply($request);
            if ($refused && $first === null) {
                $first = TableError::decode($reply);
            }
        }
        if ($first !== null) {
            throw $first;
        }
    }

    private static function value(mixed $value): string
    {
        return match (true) {
            is_int($value) => pack('CP', self::TAG_INT, $value),
            is_float($value) => pack('Ce', self::TAG_FLOAT, $value),
            is_string($value) => pack('C', self::TAG_STR) . BodyWriter::bytes($value),
            default => throw new \InvalidArgumentException('table values are ints, floats or strings, not ' . get_debug_type($value)),
        };
    }

    /** @param array<string, mixed> $values column => value */
    private static function values(array $values): string
    {
        $out = pack('v', count($values));
        foreach ($values as $column => $value) {
            $out .= BodyWriter::bytes((string) $column) . self::value($value);
        }
        return $out;
    }

    /** @return array<string, int|float|string> */
    private static function readValues(BodyReader $r): array
    {
        $row = [];
        for ($n = $r->u16(); $n > 0; $n--) {
            $column = $r->string();
            $row[$column] = match ($r->u8()) {
                self::TAG_INT => $r->u64(),
                self::TAG_FLOAT => unpack('e', pack('P', $r->u64()))[1],
                self::TAG_STR => $r->bytes(),
                default => throw new ProtocolError('unknown table value tag in a reply'),
            };
        }
        return $row;
    }

    private static function exactly(int $n, string $body): string
    {
        if (strlen($body) !== $n) {
            throw new ProtocolError("table reply of " . strlen($body) . " bytes, expected {$n}");
        }
        return $body;
    }
}
