<?php

declare(strict_types=1);

namespace Hotsock\Internal;

use Hotsock\ProtocolError;

/** Reads the fields of a frame body in order (docs/protocol.md, "Bodies"), failing on a short body. */
final class BodyReader
{
    private int $at = 0;

    public function __construct(private readonly string $body, private readonly string $what)
    {
    }

    private function take(int $n): string
    {
        if ($this->at + $n > strlen($this->body)) {
            throw new ProtocolError("{$this->what} body is too short");
        }
        $bytes = substr($this->body, $this->at, $n);
        $this->at += $n;
        return $bytes;
    }

    public function u8(): int
    {
        return ord($this->take(1));
    }

    public function u16(): int
    {
        return unpack('v', $this->take(2))[1];
    }

    public function u32(): int
    {
        return unpack('V', $this->take(4))[1];
    }

    public function u64(): int
    {
        return unpack('P', $this->take(8))[1];
    }

    public function bytes(): string
    {
        return $this->take($this->u32());
    }

    public function string(): string
    {
        $text = $this->bytes();
        if (preg_match('//u', $text) !== 1) {
            throw new ProtocolError("{$this->what} holds a string that is not UTF-8");
        }
        return $text;
    }

    /** @return list<array{0:string,1:string}> name/value pairs in order */
    public function headers(): array
    {
        $headers = [];
        for ($n = $this->u16(); $n > 0; $n--) {
            $headers[] = [$this->string(), $this->bytes()];
        }
        return $headers;
    }

    public function rest(): string
    {
        $rest = (string) substr($this->body, $this->at);
        $this->at = strlen($this->body);
        return $rest;
    }

    public function done(): bool
    {
        return $this->at === strlen($this->body);
    }
}
