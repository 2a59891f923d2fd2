<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\BodyWriter;

/** The answer to a Handshake: accept (101) or reject with an HTTP status and body. */
final class Decision
{
    /** @var list<array{0:string,1:string}> */
    private array $headers = [];
    private ?int $uid = null;

    private function __construct(private readonly int $status, private readonly string $body)
    {
    }

    public static function accept(): self
    {
        return new self(101, '');
    }

    /** Refuse with a 4xx or 5xx status (anything else becomes 403) and a short body the client sees. */
    public static function reject(int $status, string $body = ''): self
    {
        return new self($status, $body);
    }

    /** On accept, bind the connection to `$uid` (see `Ctx::bind`). */
    public function bind(int $uid): self
    {
        $this->uid = $uid;
        return $this;
    }

    /** Adds a response header (for example `Sec-WebSocket-Protocol`). */
    public function header(string $name, string $value): self
    {
        $this->headers[] = [$name, $value];
        return $this;
    }

    /** The HandshakeReply body. */
    public function encode(): string
    {
        return pack('vCP', $this->status, $this->uid === null ? 0 : 1, $this->uid ?? 0)
            . BodyWriter::headers($this->headers) . $this->body;
    }
}
