<?php

declare(strict_types=1);

namespace Hotsock\Internal;

/** The server's first frame (docs/protocol.md, "Hello"); trailing fields of later versions are ignored. */
final class Hello
{
    public const ROLE_EVENT = 0;
    public const ROLE_TASK = 1;

    /** @param list<array{name:string,rows:int,columns:list<array{0:string,1:string}>}> $tables */
    public function __construct(
        public readonly int $protocolVersion,
        public readonly int $slot,
        public readonly int $generation,
        public readonly int $role,
        public readonly int $maxConcurrency,
        public readonly ?string $handoff,
        public readonly array $tables,
    ) {
    }

    public static function decode(string $body): self
    {
        $r = new BodyReader($body, 'Hello');
        $version = $r->u16();
        if ($version !== Kind::PROTOCOL_VERSION) {
            // Another version may lay out the rest differently: only the
            // version is read, so the mismatch can be reported.
            return new self($version, 0, 0, self::ROLE_EVENT, 1, null, []);
        }
        $slot = $r->u32();
        $generation = $r->u64();
        $role = $r->u8();
        $maxConcurrency = $r->u32();
        $hasHandoff = $r->u8() !== 0;
        $handoff = $r->bytes();
        $tables = [];
        for ($n = $r->u16(); $n > 0; $n--) {
            $name = $r->string();
            $rows = $r->u32();
            $columns = [];
            for ($c = $r->u16(); $c > 0; $c--) {
                $columns[] = [$r->string(), $r->string()];
            }
            $tables[] = ['name' => $name, 'rows' => $rows, 'columns' => $columns];
        }
        return new self($version, $slot, $generation, $role, $maxConcurrency, $hasHandoff ? $handoff : null, $tables);
    }
}
