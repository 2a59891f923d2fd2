<?php

declare(strict_types=1);

namespace Hotsock;

/** One whole message from a client. */
final class Message
{
    public function __construct(
        public readonly int $conn,
        /** A previous worker received this event and died before finishing: its handler may have run once already. */
        public readonly bool $redelivered,
        public readonly bool $binary,
        /** The payload (UTF-8, checked by the server, unless binary). */
        public readonly string $data,
    ) {
    }

    /** The text of a text message; null for a binary one. */
    public function text(): ?string
    {
        return $this->binary ? null : $this->data;
    }
}
