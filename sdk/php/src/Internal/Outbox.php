<?php

declare(strict_types=1);

namespace Hotsock\Internal;

/**
 * Everything the worker sends, batched: frames are appended in the order
 * handlers made them, acknowledgements are collected and appended as one
 * Ack frame when the batch is written, so an ack always follows the frames
 * its handler sent.
 */
final class Outbox
{
    /** A batch this large is written without waiting for the loop turn to end. */
    public const WRITE_BATCH_BYTES = 256 << 10;

    private string $buffer = '';
    /** @var list<int> */
    private array $acks = [];

    public function __construct(private readonly Transport $transport)
    {
    }

    public function frame(int $kind, int $flags, int $conn, int $id, string $payload = ''): void
    {
        $this->buffer .= Frame::encode($kind, $flags, $conn, $id, $payload);
        if (strlen($this->buffer) >= self::WRITE_BATCH_BYTES) {
            $this->flush();
        }
    }

    public function ack(int $event): void
    {
        $this->acks[] = $event;
    }

    public function pending(): bool
    {
        return $this->buffer !== '' || $this->acks !== [];
    }

    /** One write of everything queued, acks last. */
    public function flush(): void
    {
        if ($this->acks !== []) {
            $this->buffer .= Frame::encode(Kind::ACK, 0, 0, 0, pack('P*', ...$this->acks));
            $this->acks = [];
        }
        if ($this->buffer === '') {
            return;
        }
        $bytes = $this->buffer;
        $this->buffer = '';
        $this->transport->write($bytes);
    }
}
