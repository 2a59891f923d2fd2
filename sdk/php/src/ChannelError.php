<?php

declare(strict_types=1);

namespace Hotsock;

use Hotsock\Internal\BodyReader;

/**
 * The server refused a channel request (docs/protocol.md, "ChannelError").
 * `getCode()` is the protocol's code, `$number` the limit or head it names.
 */
final class ChannelError extends HotsockException
{
    public const BAD_NAME = 1;
    public const MAX_CHANNELS = 2;
    public const MAX_MEMBERS = 3;
    public const MAX_CHANNELS_PER_CONN = 4;
    public const AHEAD_OF_HEAD = 5;
    public const NO_SUCH_CONNECTION = 6;
    public const TOO_LARGE = 7;
    public const CLUSTER_UNAVAILABLE = 8;

    public function __construct(int $code, public readonly int $number, public readonly string $detail)
    {
        $what = match ($code) {
            self::BAD_NAME => "bad channel name: {$detail}",
            self::MAX_CHANNELS => "channels.max_channels = {$number} reached",
            self::MAX_MEMBERS => "channels.max_members = {$number} reached",
            self::MAX_CHANNELS_PER_CONN => "channels.max_channels_per_conn = {$number} reached",
            self::AHEAD_OF_HEAD => "position {$detail} is ahead of the channel's head {$number}",
            self::NO_SUCH_CONNECTION => 'no such connection',
            self::TOO_LARGE => "publication of {$detail} bytes exceeds limits.max_message_bytes = {$number}",
            self::CLUSTER_UNAVAILABLE => "the cluster is unavailable: {$detail}",
            default => "channel error {$code} ({$number}): {$detail}",
        };
        parent::__construct($what, $code);
    }

    public static function decode(string $body): self
    {
        $r = new BodyReader($body, 'ChannelError');
        $code = $r->u16();
        $number = $r->u64();
        return new self($code, $number, $r->rest());
    }
}
