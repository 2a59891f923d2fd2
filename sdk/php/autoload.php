<?php

declare(strict_types=1);

// For running without Composer: maps Hotsock\Foo\Bar to src/Foo/Bar.php,
// the same PSR-4 rule composer.json declares.
spl_autoload_register(static function (string $class): void {
    $prefix = 'Hotsock\\';
    if (!str_starts_with($class, $prefix)) {
        return;
    }
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
