<?php

declare(strict_types=1);

namespace Hotsock\Internal;

use Hotsock\ProtocolError;

/**
 * Splits bytes read from the server into frames. Accepts any number of
 * frames per read and frames split across reads; never resynchronises
 * after an error (the stream cannot be trusted afterwards).
 */
final class Decoder
{
    public const HEADER_BYTES = 22;
    /** docs/protocol.md: a longer payload is a fatal error. */
    public const PAYLOAD_MAX_BYTES = (64 << 20) + 4096;
    /** Consumed bytes are cut off the buffer only past this, so a read of many small frames is not one copy per frame. */
    private const COMPACT_BYTES = 64 << 10;

    private string $buffer = '';
    private int $offset = 0;

    public function feed(string $bytes): void
    {
        if ($this->offset > 0 && ($this->offset >= self::COMPACT_BYTES || $this->offset === strlen($this->buffer))) {
            $this->buffer = substr($this->buffer, $this->offset);
            $this->offset = 0;
        }
        $this->buffer .= $bytes;
    }

    /** The next whole frame, or null until more bytes arrive. */
    public function next(): ?Frame
    {
        $available = strlen($this->buffer) - $this->offset;
        if ($available < self::HEADER_BYTES) {
            return null;
        }
        /** @var array{len:int,kind:int,flags:int,conn:int,id:int} $h */
        $h = unpack('Vlen/Ckind/Cflags/Pconn/Pid', $this->buffer, $this->offset);
        if (!isset(Kind::TO_WORKER[$h['kind']])) {
            throw new ProtocolError(sprintf('unknown or wrong-direction frame kind 0x%02x from the server', $h['kind']));
        }
        if ($h['len'] > self::PAYLOAD_MAX_BYTES) {
            throw new ProtocolError(sprintf('frame payload of %d bytes exceeds %d', $h['len'], self::PAYLOAD_MAX_BYTES));
        }
        if ($available < self::HEADER_BYTES + $h['len']) {
            return null;
        }
        $payload = $h['len'] === 0 ? '' : substr($this->buffer, $this->offset + self::HEADER_BYTES, $h['len']);
        $this->offset += self::HEADER_BYTES + $h['len'];
        return new Frame($h['kind'], $h['flags'], $h['conn'], $h['id'], $payload);
    }
}
