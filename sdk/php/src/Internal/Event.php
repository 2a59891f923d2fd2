<?php

declare(strict_types=1);

namespace Hotsock\Internal;

use Hotsock\Close;
use Hotsock\HandshakeRequest;
use Hotsock\Handshake;
use Hotsock\Join;
use Hotsock\Leave;
use Hotsock\Message;
use Hotsock\Open;
use Hotsock\ProtocolError;
use Hotsock\Task;

/**
 * An event frame decoded into what its handler receives, with what the
 * runtime needs around it: its lane (the connection, or the task id), its
 * id for the ack, and whether it is a redelivery. Decoded when it arrives,
 * so a malformed body is a protocol error, not a handler failure.
 */
final class Event
{
    private function __construct(
        public readonly int $kind,
        public readonly int $lane,
        public readonly int $id,
        public readonly bool $redelivered,
        public readonly Handshake|Open|Message|Close|Task|Join|Leave $payload,
    ) {
    }

    public static function decode(Frame $frame): self
    {
        $again = $frame->redelivered();
        $conn = $frame->conn;
        $payload = match ($frame->kind) {
            Kind::HANDSHAKE => new Handshake($conn, $again, HandshakeRequest::decode($frame->payload)),
            Kind::OPEN => $frame->payload === ''
                ? new Open($conn, $again)
                : throw new ProtocolError('Open with a payload'),
            Kind::MESSAGE => self::message($frame),
            Kind::CLOSE => self::close($frame),
            Kind::TASK => new Task($conn, $again, $frame->payload),
            Kind::JOIN => new Join($conn, $again, self::utf8($frame->payload, 'Join')),
            Kind::LEAVE => new Leave($conn, $again, self::utf8($frame->payload, 'Leave')),
            default => throw new ProtocolError(sprintf('kind 0x%02x is not an event', $frame->kind)),
        };
        return new self($frame->kind, $conn, $frame->id, $again, $payload);
    }

    private static function message(Frame $frame): Message
    {
        $binary = $frame->has(Kind::BINARY);
        if (!$binary) {
            self::utf8($frame->payload, 'text Message');
        }
        return new Message($frame->conn, $frame->redelivered(), $binary, $frame->payload);
    }

    private static function close(Frame $frame): Close
    {
        if (strlen($frame->payload) < 2) {
            throw new ProtocolError('Close body shorter than its code');
        }
        $code = unpack('v', $frame->payload)[1];
        return new Close($frame->conn, $frame->redelivered(), $code, self::utf8(substr($frame->payload, 2), 'Close reason'));
    }

    private static function utf8(string $text, string $what): string
    {
        if (preg_match('//u', $text) !== 1) {
            throw new ProtocolError("{$what} is not UTF-8");
        }
        return $text;
    }
}
