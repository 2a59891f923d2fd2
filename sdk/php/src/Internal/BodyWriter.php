<?php

declare(strict_types=1);

namespace Hotsock\Internal;

/** Encodes the composite fields of worker-to-server bodies. */
final class BodyWriter
{
    public static function bytes(string $bytes): string
    {
        return pack('V', strlen($bytes)) . $bytes;
    }

    /** @param list<array{0:string,1:string}> $headers */
    public static function headers(array $headers): string
    {
        $out = pack('v', count($headers));
        foreach ($headers as [$name, $value]) {
            $out .= self::bytes($name) . self::bytes($value);
        }
        return $out;
    }
}
