<?php

declare(strict_types=1);

namespace Hotsock;

/** One node's connections of a uid (docs/protocol.md, "Presence list"). */
final class PresenceEntry
{
    /** @param list<int> $conns connection ids on that node */
    public function __construct(public readonly string $node, public readonly array $conns)
    {
    }

    /** @return list<PresenceEntry> */
    public static function decodeList(string $body): array
    {
        $entries = [];
        $at = 0;
        $end = strlen($body);
        while ($at < $end) {
            if ($end - $at < 4) {
                throw new ProtocolError('presence entry cut short');
            }
            /** @var array{n:int} $len */
            $len = unpack('Vn', $body, $at);
            $at += 4;
            if ($end - $at < $len['n'] + 4) {
                throw new ProtocolError('presence node name cut short');
            }
            $node = substr($body, $at, $len['n']);
            $at += $len['n'];
            /** @var array{n:int} $count */
            $count = unpack('Vn', $body, $at);
            $at += 4;
            if ($end - $at < $count['n'] * 8) {
                throw new ProtocolError('presence connection list cut short');
            }
            $conns = [];
            for ($i = 0; $i < $count['n']; $i++) {
                /** @var array{c:int} $conn */
                $conn = unpack('Pc', $body, $at);
                $conns[] = $conn['c'];
                $at += 8;
            }
            $entries[] = new self($node, $conns);
        }
        return $entries;
    }
}
