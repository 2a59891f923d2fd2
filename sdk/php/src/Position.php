<?php

declare(strict_types=1);

namespace Hotsock;

/**
 * A place in a channel's stream: its epoch and an offset. The epoch is a
 * u64 held in a PHP int with the same 64 bits (it may print negative);
 * `epochHex()` is the 16 hex digits the JSON envelope uses.
 */
final class Position
{
    public function __construct(public readonly int $epoch, public readonly int $offset)
    {
    }

    /** From the envelope's 16 hex digits and a decimal offset (a client's `since=`); null if malformed. */
    public static function parse(string $epochHex, string $offset): ?self
    {
        if (preg_match('/^[0-9a-fA-F]{16}$/', $epochHex) !== 1 || preg_match('/^[0-9]{1,19}$/', $offset) !== 1) {
            return null;
        }
        $bytes = hex2bin($epochHex);
        if ($bytes === false) {
            return null;
        }
        return new self(unpack('J', $bytes)[1], (int) $offset);
    }

    public function epochHex(): string
    {
        return bin2hex(pack('J', $this->epoch));
    }

    public static function decode(string $body): self
    {
        if (strlen($body) !== 16) {
            throw new ProtocolError('publish reply is not 16 bytes');
        }
        /** @var array{e:int,o:int} $p */
        $p = unpack('Pe/Po', $body);
        return new self($p['e'], $p['o']);
    }
}
