<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\BodyReader;

/** An upgrade request: peer address, path with query, headers in order. */
final class HandshakeRequest
{
    /** @param list<array{0:string,1:string}> $headers */
    public function __construct(public readonly string $peer, public readonly string $path, public readonly array $headers)
    {
    }

    public static function decode(string $body): self
    {
        $r = new BodyReader($body, 'HandshakeRequest');
        $request = new self($r->string(), $r->string(), $r->headers());
        if (!$r->done()) {
            throw new ProtocolError('HandshakeRequest body has trailing bytes');
        }
        return $request;
    }

    /** The first value of a header, compared case-insensitively. */
    public function header(string $name): ?string
    {
        foreach ($this->headers as [$key, $value]) {
            if (strcasecmp($key, $name) === 0) {
                return $value;
            }
        }
        return null;
    }

    /** A query-string parameter, undecoded (`?a=1&b=2`), as the Rust SDK's `query`. */
    public function query(string $key): ?string
    {
        $at = strpos($this->path, '?');
        if ($at === false) {
            return null;
        }
        foreach (explode('&', substr($this->path, $at + 1)) as $pair) {
            $parts = explode('=', $pair, 2);
            if ($parts[0] === $key) {
                return $parts[1] ?? '';
            }
        }
        return null;
    }
}
