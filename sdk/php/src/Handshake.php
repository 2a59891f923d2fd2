<?php

declare(strict_types=1);

namespace Hotsock;

/** An upgrade request to decide on (only for apps with HANDLES_HANDSHAKE). */
final class Handshake
{
    public function __construct(
        public readonly int $conn,
        /** A previous worker received this event and died before finishing. */
        public readonly bool $redelivered,
        public readonly HandshakeRequest $request,
    ) {
    }
}
