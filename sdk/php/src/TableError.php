<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\BodyReader;

/**
 * A shared-table operation failed: the Rust SDK's `TableError`, case for
 * case (docs/protocol.md, "TableFailure"). `getCode()` is one of the
 * constants below; the message is the Rust SDK's wording.
 *
 * - TABLE_FULL: `$value` is the table's capacity.
 * - BAD_KEY: `$value` is the key's length, `$limit` the longest key (1 to 64 bytes).
 * - UNKNOWN_COLUMN, OVERFLOW: `$column` names the column.
 * - WRONG_TYPE: `$column`; `$value` is what it holds (1 i64, 2 f64, 3 string).
 * - STRING_TOO_LONG: `$column`, `$value` the string's length, `$limit` the column's size.
 * - LOCKED: `$value` is the pid of the process that held the row too long.
 * - NO_SUCH_TABLE: `$value` is the table's number (not raised by `Ctx::table`, which returns null).
 * - INTERNAL: the server's side failed; the message says how.
 */
final class TableError extends HotsockException
{
    public const NO_SUCH_TABLE = 1;
    public const TABLE_FULL = 2;
    public const BAD_KEY = 3;
    public const UNKNOWN_COLUMN = 4;
    public const WRONG_TYPE = 5;
    public const STRING_TOO_LONG = 6;
    public const OVERFLOW = 7;
    public const LOCKED = 8;
    public const INTERNAL = 9;

    public function __construct(
        int $code,
        public readonly int $value,
        public readonly int $limit,
        public readonly string $column,
        string $message,
    ) {
        parent::__construct($message, $code);
    }

    public static function decode(string $body): self
    {
        $r = new BodyReader($body, 'TableFailure');
        $code = $r->u16();
        $value = $r->u64();
        $limit = $r->u64();
        $column = $r->string();
        return new self($code, $value, $limit, $column, $r->rest());
    }
}
